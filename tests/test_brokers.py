"""The hub on the brokers users already run: Mosquitto, RabbitMQ with rabbitmq_mqtt and NATS
with its MQTT gateway, each the tests' own instance. On each: a hub stopped mid-stream (SIGTERM or kill -9) and started
again accepts every frame exactly once, with the loss, corruption and attack figures of a
run without the stop; a broker restarted mid-stream loses nothing it acknowledged. Where a
broker redelivers a link's duplicate or reordered frame with its own redeliveries, that frame
is counted as redelivered: the link figures may lose it, never gain one. docs/hub.md has the
broker table; tests/test_hub_service.py has the rest of the Mosquitto tests."""

import signal
from itertools import count

import pytest

from hardware.link_registry import links_by_code
from hub.core.report import build_report
from hub.core.verifier import Verifier
from hub.keys.keyfile import KeyFile
from simulator.run import Scenario, generate, label
from tools.brokers import Nats, RabbitMQ
from tools.services import HubProcess, Mosquitto, frames_seen, publish, stored_report, wait_for

from .test_hub_service import sealed_stream

BROKERS = {"mosquitto": Mosquitto, "rabbitmq": RabbitMQ, "nats": Nats}
_hub_numbers = count()


@pytest.fixture(scope="module", params=sorted(BROKERS))
def other_broker(request, tmp_path_factory):
    """One node of each kind for the module (RabbitMQ takes ~10 s to start); each test's hub has
    a client id of its own, so no test sees another's session."""
    broker = BROKERS[request.param](tmp_path_factory.mktemp(request.param))
    broker.start()
    yield broker
    broker.stop()


def start_hub(tmp_path, broker, keys, name="hub", client_id=None):
    config = tmp_path / "hub.toml"
    if not config.exists():
        config.write_text(f'[mqtt]\nclient_id = "linkseal-hub-{next(_hub_numbers)}"\n')
    hub = HubProcess(broker, keys.path, tmp_path / "hub.db", tmp_path / f"{name}.log", "--config", config).start()
    hub.wait_connected()
    return hub


def offline_links(keys, messages) -> dict:
    verifier = Verifier(KeyFile.load(keys.path, allow_plaintext=True).device_keys(),
                        {c: link.name for c, link in links_by_code().items()})
    for topic, data in messages:
        verifier.verify(topic, data, 0.0)
    return build_report(verifier)["links"]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_a_hub_stopped_mid_stream_changes_nothing(tmp_path, other_broker, keys, stop):
    lossy = {"loss": "bernoulli", "loss_rate": 0.05, "jitter_ms": 400.0, "duplicate": 0.02}
    generated = generate(Scenario(devices=6, duration=40, rate=5, seed=5, attacks={},
                                  profiles={link: lossy for link in ("wifi", "lora")}), keyfile=keys)
    messages = [(topic, data) for _, topic, data, _, _ in label(generated.events, generated.device_links)[0]]
    want = offline_links(keys, messages)
    hub = start_hub(tmp_path, other_broker, keys)
    try:
        publish(other_broker.port, messages)
        wait_for(lambda: frames_seen(hub.db) >= len(messages) // 3, 60, "a third of the stream committed")
        hub.signal(stop)
        hub.wait()
    finally:
        hub.stop()
    again = start_hub(tmp_path, other_broker, keys, name="hub-again")
    valid = sum(e["valid"] for e in want.values())

    def all_delivered():
        links = stored_report(again.db)["links"].values()
        return (sum(e["valid"] for e in links) == valid and
                sum(e["received"] + e["redelivered"] for e in links) >= sum(e["received"] for e in want.values()))

    try:
        wait_for(all_delivered, 90, f"every one of the stream's {valid} valid frames")
        again.signal(signal.SIGTERM)
        assert again.wait() == 0
    finally:
        again.stop()
    got = stored_report(again.db)["links"]
    exact = ("valid", "lost", "corrupt", "forged", "replay", "malformed", "burst_mean", "ge_p", "ge_r")
    differences = {(link, k): (got.get(link, {}).get(k), want[link][k]) for link in want for k in exact
                   if got.get(link, {}).get(k) != want[link][k]}
    assert not differences, f"(got, without the stop): {differences}"
    for link, entry in want.items():
        # What the broker delivered again may take a link duplicate or a reordered frame that was in
        # flight with it into `redelivered`; it never adds a link duplicate or a reordering.
        assert got[link]["duplicate"] <= entry["duplicate"] and got[link]["reordered"] <= entry["reordered"]
        moved = entry["duplicate"] + entry["reordered"] - got[link]["duplicate"] - got[link]["reordered"]
        assert moved <= got[link]["redelivered"], (link, got[link], entry)


def test_a_broker_restart_mid_stream_loses_nothing(tmp_path, other_broker, keys):
    stream = sealed_stream(keys, devices=4, frames=150)
    hub = start_hub(tmp_path, other_broker, keys)
    try:
        half = len(stream) // 2
        publish(other_broker.port, stream[:half])
        other_broker.stop()
        other_broker.start()
        hub.wait_connected(count=2)
        publish(other_broker.port, stream[half:])
        wait_for(lambda: stored_report(hub.db)["links"]["wifi"]["valid"] == len(stream), 90, "the whole stream")
        assert any(e["event"] == "disconnected" for e in hub.events())
        # The broker kept the hub's session (and what it queued for it) across its restart.
        assert [e["session_present"] for e in hub.events() if e["event"] == "connected"] == [False, True]
    finally:
        hub.stop()
    wifi = stored_report(hub.db)["links"]["wifi"]
    assert (wifi["valid"], wifi["lost"], wifi["duplicate"], wifi["reordered"]) == (len(stream), 0, 0, 0)
