"""`linkseal hub run` against a real Mosquitto broker: end to end, restarts, kill -9, floods, SIGTERM."""

import json
import os
import random
import signal
import subprocess
import urllib.request

from agent import Sealer, topic_for
from agent import frame as wire
from hardware.link_registry import links_by_code
from hub.core.report import build_report
from hub.core.verifier import EVENT_SAMPLES, FLOOD_KINDS, Verifier
from hub.keys.keyfile import KeyFile
from simulator.run import Scenario, generate, label
from tools.services import LINKSEAL, HubProcess, frames_seen, publish, publish_paced, stored_report, wait_for

COUNTERS = ("received", "valid", "lost", "duplicate", "reordered", "corrupt", "forged", "replay", "malformed",
            "rate_limited")


def start_hub(tmp_path, broker, keyfile, *extra, name="hub", db=None):
    hub = HubProcess(broker, keyfile.path, db or tmp_path / "hub.db", tmp_path / f"{name}.log", *extra).start()
    hub.wait_connected()
    return hub


def sealed_stream(keyfile, devices=4, frames=200, link="wifi"):
    sealers = [Sealer(d, bytes.fromhex(keyfile.provision(d, link)["key"]), link=link, epoch=1)
               for d in (f"dev-{i}" for i in range(devices))]
    return [(topic_for(s.device_id), s.seal(b"reading %d" % i)) for i in range(frames) for s in sealers]


def counters(entry):
    return {k: entry[k] for k in COUNTERS}


def listed_events(events):
    """(device, kind) of the events both hubs must list alike. Kinds an attacker can repeat are
    sampled per minute of arrival: the offline replay puts every frame at t=0, the live hub may
    cross a minute boundary, so only the first samples of each such kind are compared."""
    flood = {kind: [] for kind in FLOOD_KINDS}
    others = []
    for e in events:
        if e["kind"] not in flood:
            others.append((e["device"], e["kind"]))
        elif e["device"] is not None and len(flood[e["kind"]]) < EVENT_SAMPLES:
            flood[e["kind"]].append((e["device"], e["kind"]))
    return others, flood


def test_frames_through_the_broker_report_exactly_as_offline_verify(tmp_path, broker):
    keyfile = KeyFile.create(tmp_path / "hub.keys")
    stressed = {"loss": "bernoulli", "loss_rate": 0.1, "burst_rate": 0.03, "duplicate": 0.03, "jitter_ms": 300.0}
    generated = generate(Scenario(devices=12, duration=60, rate=5, seed=11,
                                  profiles={link: stressed for link in ("wifi", "ble", "lora")}), keyfile=keyfile)
    messages = [(topic, data) for _, topic, data, _, _ in label(generated.events, generated.device_links)[0]]
    hub = start_hub(tmp_path, broker, keyfile)
    try:
        publish(broker.port, messages)
        wait_for(lambda: frames_seen(hub.db) == len(messages), 60, "every message to be committed")
        hub.signal(signal.SIGTERM)
        assert hub.wait() == 0
    finally:
        hub.stop()
    offline = Verifier(KeyFile.load(keyfile.path, allow_plaintext=True).device_keys(), {c: l.name for c, l in links_by_code().items()})
    for topic, data in messages:
        offline.verify(topic, data, 0.0)
    want, got = build_report(offline), stored_report(hub.db)
    assert {n: counters(e) for n, e in got["links"].items()} == {n: counters(e) for n, e in want["links"].items()}
    assert {n: counters(e) for n, e in got["devices"].items()} == {n: counters(e) for n, e in want["devices"].items()}
    assert got["unknown_device"] == want["unknown_device"] == 53
    assert listed_events(got["events"]) == listed_events(want["events"])
    assert sum(e["lost"] for e in got["links"].values()) > 0
    log = hub.log.read_text()
    for device, entry in keyfile.devices.items():
        assert keyfile.provision(device, entry["link"], save=False)["key"] not in log
    assert "payload" not in log


def test_a_crash_between_commit_and_acknowledgement_is_not_counted_against_the_link(tmp_path, broker, keys):
    """The hub dies right after a commit, before acknowledging: the broker redelivers that batch
    with the DUP flag. Those copies are counted as redelivered, never as link duplicates."""
    import io
    import threading

    from hub.service.config import HubSettings, parse_broker
    from hub.service.ingest import Ingest
    from shared.log import EventLog
    from hub.service.ways_in.mqtt_adapter import HubService
    from hub.service.storage.sqlite import SQLiteStorage

    class CrashAfterCommit(SQLiteStorage):
        def commit(self, batch):
            super().commit(batch)
            if batch.records:
                raise RuntimeError("crashed after the commit, before the acknowledgements")

    stream = sealed_stream(keys, devices=3, frames=100)
    names = {c: link.name for c, link in links_by_code().items()}

    def service(storage_class):
        verifier = Verifier(KeyFile.load(keys.path, allow_plaintext=True).device_keys(), names)
        return HubService(parse_broker(broker.url), HubSettings(client_id="crash-hub", batch_size=50),
                          Ingest(verifier, storage_class(tmp_path / "hub.db")), EventLog(stream=io.StringIO()))

    first = service(CrashAfterCommit)
    runner = threading.Thread(target=first.run, kwargs={"handle_signals": False})
    runner.start()
    assert first.subscribed.wait(30), "the hub did not subscribe"
    publish(broker.port, stream)
    runner.join(60)
    assert first.exit_code == 1 and frames_seen(tmp_path / "hub.db") > 0
    second = service(SQLiteStorage)
    runner = threading.Thread(target=second.run, kwargs={"handle_signals": False})
    runner.start()
    try:
        wait_for(lambda: stored_report(tmp_path / "hub.db")["links"]["wifi"]["valid"] == len(stream), 60,
                 "every frame after the crash")
    finally:
        second.stop()
        runner.join(30)
    wifi = stored_report(tmp_path / "hub.db")["links"]["wifi"]
    assert wifi["redelivered"] > 0  # the crashed batch came again
    assert (wifi["received"], wifi["duplicate"], wifi["reordered"], wifi["lost"]) == (len(stream), 0, 0, 0)


def test_kill_9_then_replay_accepts_nothing_twice(tmp_path, broker, keys):
    import sqlite3

    stream = sealed_stream(keys, devices=8, frames=500)
    hub = start_hub(tmp_path, broker, keys)
    publish(broker.port, stream)
    wait_for(lambda: frames_seen(hub.db) > 0, 60, "the first commit")
    hub.stop()  # SIGKILL, mid-stream or just after it
    hub = start_hub(tmp_path, broker, keys, name="hub2")
    try:
        wait_for(lambda: stored_report(hub.db)["links"]["wifi"]["valid"] == len(stream), 60,
                 "every frame accepted once after the restart")
        before = frames_seen(hub.db)
        publish(broker.port, stream)  # an attacker replays everything
        wait_for(lambda: frames_seen(hub.db) >= before + len(stream), 60, "the replay to be processed")
    finally:
        hub.stop()
    wifi = stored_report(hub.db)["links"]["wifi"]
    assert wifi["valid"] == len(stream)
    assert wifi["duplicate"] + wifi["replay"] >= len(stream)
    rows = sqlite3.connect(hub.db).execute("SELECT COUNT(*) FROM records").fetchone()[0]
    assert rows == len(stream)


def test_garbage_and_flood_do_not_stop_the_hub(tmp_path, broker, keys):
    rng = random.Random(5)
    good = sealed_stream(keys, devices=2, frames=20)
    garbage = [(f"linkseal/v1/{rng.getrandbits(64):x}/rec", rng.randbytes(rng.randrange(0, 300)))
               for _ in range(2000)]
    garbage += [(topic_for("dev-0"), rng.randbytes(rng.randrange(0, 300))) for _ in range(300)]
    garbage += [(topic_for("dev-1"), b"\x11" * 70000)]  # oversized
    hub = start_hub(tmp_path, broker, keys)
    try:
        publish(broker.port, garbage + good)
        wait_for(lambda: frames_seen(hub.db) >= len(garbage) + len(good), 60, "garbage and good frames")
        assert hub.process.poll() is None
    finally:
        hub.stop()
    report = stored_report(hub.db)
    assert report["unknown_device"] == 2000
    assert sum(d["valid"] for d in report["devices"].values()) == len(good)
    assert set(report["devices"]) == {"dev-0", "dev-1"}


def test_sigterm_commits_and_exits_cleanly(tmp_path, broker, keys):
    stream = sealed_stream(keys, devices=2, frames=100)
    hub = start_hub(tmp_path, broker, keys)
    try:
        publish(broker.port, stream)
        wait_for(lambda: frames_seen(hub.db) > 0, 30, "the first commit")
        hub.signal(signal.SIGTERM)
        assert hub.wait() == 0
    finally:
        hub.stop()
    assert [e["event"] for e in hub.events()][-2:] == ["stopping", "stopped"]
    # Whatever was not committed is redelivered to the next run: in the end every frame counts once.
    hub = start_hub(tmp_path, broker, keys, name="hub2")
    try:
        wait_for(lambda: stored_report(hub.db)["links"]["wifi"]["valid"] == len(stream), 30, "the rest")
    finally:
        hub.stop()


def test_rate_limit_per_device(tmp_path, broker, keys):
    config = tmp_path / "hub.toml"
    config.write_text("[ingest]\nreport_interval = 0.2\n[rate_limits]\ndefault = { rate = 0.001, burst = 5 }\n")
    noisy = sealed_stream(keys, devices=1, frames=30)
    hub = start_hub(tmp_path, broker, keys, "--config", config)
    try:
        publish(broker.port, noisy)
        wait_for(lambda: frames_seen(hub.db) == 30, 30, "the noisy device's frames")
        wait_for(lambda: any(e["event"] == "rate_limited" for e in hub.events()), 10, "the rate-limit log line")
    finally:
        hub.stop()
    entry = stored_report(hub.db)["devices"]["dev-0"]
    assert (entry["valid"], entry["rate_limited"]) == (5, 25)
    summaries = [e for e in hub.events() if e["event"] == "rate_limited"]
    # One line per interval, not one per frame.
    assert sum(line["frames_by_link"]["wifi"] for line in summaries) == 25 and len(summaries) <= 3


def test_a_restart_backlog_sent_within_the_rate_drains_whole(tmp_path, broker, keys):
    """A device at 49 frames/s (limit 100/s, burst 10) keeps sending while the hub is down:
    the broker's backlog arrives at once after the restart and every record is valid. A device
    really above its rate afterwards is still limited."""
    config = tmp_path / "hub.toml"
    config.write_text("[rate_limits]\ndefault = { rate = 100, burst = 10 }\n")
    stream = sealed_stream(keys, devices=1, frames=3310)
    before, backlog, flood = stream[:10], stream[10:310], stream[310:]
    hub = start_hub(tmp_path, broker, keys, "--config", config)
    try:
        publish_paced(broker.port, before, 49)
        wait_for(lambda: frames_seen(hub.db) == len(before), 30, "the first frames stored")
    finally:
        hub.stop()
    publish_paced(broker.port, backlog, 49)  # about 6 s with no hub: the broker keeps them
    hub = start_hub(tmp_path, broker, keys, "--config", config, name="hub-again")
    try:
        wait_for(lambda: frames_seen(hub.db) == len(before) + len(backlog), 30, "the backlog")
        entry = stored_report(hub.db)["devices"]["dev-0"]
        assert (entry["valid"], entry["rate_limited"], entry["lost"]) == (310, 0, 0)
        # 3,000 frames as fast as the broker takes them: past the burst and what is left of the
        # credit for the downtime (100 frames' worth a second of it, less the 300 of the backlog:
        # a few hundred, unless the restart took far longer than the test's few seconds).
        publish(broker.port, flood)
        wait_for(lambda: frames_seen(hub.db) == len(stream), 30, "the flood")
    finally:
        hub.stop()
    entry = stored_report(hub.db)["devices"]["dev-0"]
    assert entry["rate_limited"] >= 1500 and entry["valid"] + entry["rate_limited"] == len(stream)
    assert entry["lost"] == 0  # the hub's refusals are not the link's loss


def test_metrics_endpoint(tmp_path, broker, keys):
    stream = sealed_stream(keys, devices=3, frames=20)
    hub = start_hub(tmp_path, broker, keys, "--metrics", "127.0.0.1:0")  # any free port; the log says which
    try:
        address = next(e["metrics"] for e in hub.events() if e["event"] == "started")
        publish(broker.port, stream)
        wait_for(lambda: frames_seen(hub.db) == len(stream), 30, "the stream")
        text = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
    finally:
        hub.stop()
    assert f'linkseal_frames_total{{link="wifi",outcome="valid"}} {float(len(stream))}' in text
    for name in ("linkseal_lost_frames_total", "linkseal_source_dropped_frames_total",
                 "linkseal_lost_on_device_frames_total", "linkseal_loss_ratio",
                 "linkseal_corrupt_ratio",
                 "linkseal_link_abnormal", "linkseal_queue_depth", "linkseal_ingest_lag_seconds",
                 "linkseal_storage_commit_seconds_bucket", 'linkseal_storage_fault{kind="storage_full"} 0.0',
                 "linkseal_client_id_conflicts_total 0.0"):
        assert name in text
    assert "dev-0" not in text  # no per-device labels
    # The shipped Grafana dashboard asks only for metrics the hub really exposes.
    import json
    import re
    from pathlib import Path

    dashboard = json.loads((Path(__file__).resolve().parent.parent / "docs" / "grafana-dashboard.json").read_text())
    wanted = {re.sub(r"_bucket$", "", name) for panel in dashboard["panels"] for target in panel["targets"]
              for name in re.findall(r"linkseal_\w+", target["expr"])}
    exposed = set(re.findall(r"^(linkseal_\w+?)(?:_bucket|_count|_sum|_created)?[{ ]", text, re.M))
    assert wanted and wanted <= exposed, wanted - exposed


def test_report_and_audit_commands(tmp_path, broker, keys):
    import sqlite3
    import subprocess


    stream = sealed_stream(keys, devices=2, frames=10)
    forged = bytearray(stream[0][1])
    forged[-6] ^= 1
    forged = bytes(forged[:-4]) + wire.crc_trailer(bytes(forged[:-4]))
    hub = start_hub(tmp_path, broker, keys)
    try:
        publish(broker.port, stream + [(stream[0][0], forged)] * 3)
        wait_for(lambda: frames_seen(hub.db) == len(stream) + 3, 30, "the stream")
    finally:
        hub.stop()

    def run(*args):
        return subprocess.run([str(LINKSEAL), *map(str, args)], capture_output=True, text=True, timeout=60)

    table = run("hub", "report", "--db", hub.db, "--since", "15m")
    assert table.returncode == 0 and "wifi" in table.stdout
    assert all(len(line) <= 80 for line in table.stdout.splitlines())
    assert run("hub", "report", "--db", hub.db, "--since", "fortnight").returncode == 2
    assert run("hub", "report", "--db", tmp_path / "missing.db").returncode == 2
    assert '"ble"' not in run("hub", "report", "--db", hub.db, "--link", "wifi", "--json").stdout
    ok = run("hub", "audit", "--db", hub.db)
    # One count, one meaning: the audit's events are the report's events, whatever their kind.
    stored_events = len(json.loads(run("hub", "report", "--db", hub.db, "--json").stdout)["events"])
    assert ok.returncode == 0 and f"OK: {stored_events} events in the chain" in ok.stdout, ok.stdout
    assert "Security events:" in table.stdout and "forg: forged" in table.stdout  # the columns spelled out
    db = sqlite3.connect(hub.db)
    db.execute("UPDATE events SET reason = 'nothing to see' WHERE id = 2")
    db.commit()
    broken = run("hub", "audit", "--db", hub.db)
    assert broken.returncode == 1 and "event 2" in broken.stdout
    assert os.stat(hub.db).st_mode & 0o077 == 0


def test_abnormal_link_raises_a_health_event(tmp_path, broker, keys):
    config = tmp_path / "hub.toml"
    config.write_text("[ingest]\nreport_interval = 0.2\n")
    sealer = Sealer("plc-1", bytes.fromhex(keys.provision("plc-1", "fiber")["key"]), link="fiber", epoch=1)
    frames = [sealer.seal(b"coil=%d" % i) for i in range(400)]
    kept = [(topic_for("plc-1"), f) for i, f in enumerate(frames) if i % 10]  # a fibre run losing 10%
    hub = start_hub(tmp_path, broker, keys, "--config", config)
    try:
        publish(broker.port, kept)
        wait_for(lambda: any(e["kind"] == "abnormal_link" for e in stored_report(hub.db)["events"]), 30,
                 "an abnormal_link event")
    finally:
        hub.stop()
    report = stored_report(hub.db)
    assert report["links"]["fiber"]["abnormal"] and "loss" in report["links"]["fiber"]["abnormal"][0]
    event = next(e for e in report["events"] if e["kind"] == "abnormal_link")
    assert event["link"] == "fiber" and event["device"] is None
    assert any(e["event"] == "abnormal_link" for e in hub.events())


def test_slow_storage_stops_intake_instead_of_dropping(tmp_path, broker, keys):
    import io
    import threading

    from hub.service.config import HubSettings, parse_broker
    from hub.service.ingest import Ingest
    from shared.log import EventLog
    from hub.service.ways_in.mqtt_adapter import HubService
    from hub.service.storage.sqlite import SQLiteStorage

    class GatedStorage(SQLiteStorage):
        """SQLite whose commits wait until the test opens the gate: storage that has stalled."""

        def __init__(self, path, gate):
            super().__init__(path)
            self.gate = gate

        def commit(self, batch):
            self.gate.wait()
            super().commit(batch)

    stream = sealed_stream(keys, devices=3, frames=100)
    gate = threading.Event()
    verifier = Verifier(KeyFile.load(keys.path, allow_plaintext=True).device_keys(), {c: l.name for c, l in links_by_code().items()})
    settings = HubSettings(queue_size=20, batch_size=10, client_id="gated-hub")
    service = HubService(parse_broker(broker.url), settings, Ingest(verifier, GatedStorage(tmp_path / "hub.db", gate)),
                         EventLog(stream=io.StringIO()))
    runner = threading.Thread(target=service.run, kwargs={"handle_signals": False})
    runner.start()
    try:
        assert service.subscribed.wait(30), "the hub did not subscribe"
        publish(broker.port, stream)
        wait_for(lambda: service.queue.full(), 30, "the queue to fill while storage is stalled")
        assert service.queue.qsize() == settings.queue_size  # bounded: the rest waits at the broker
        assert frames_seen(tmp_path / "hub.db") == 0
        gate.set()
        wait_for(lambda: frames_seen(tmp_path / "hub.db") == len(stream), 60, "every frame once storage recovers")
    finally:
        gate.set()
        service.stop()
        runner.join(30)
    assert stored_report(tmp_path / "hub.db")["links"]["wifi"]["valid"] == len(stream)


def test_a_stop_signal_in_the_middle_of_a_log_line_does_not_deadlock(tmp_path):
    """SIGTERM runs its handler on the main thread, possibly while that thread holds the log's
    lock (writing "subscribed", say): the handler must not log, or it waits for ever."""
    import io
    import threading

    from hub.service.config import HubSettings, parse_broker
    from hub.service.ingest import Ingest
    from shared.log import EventLog
    from hub.service.ways_in.mqtt_adapter import HubService
    from hub.service.storage.sqlite import SQLiteStorage

    log = EventLog(stream=io.StringIO())
    service = HubService(parse_broker("mqtt://127.0.0.1:1"), HubSettings(),
                         Ingest(Verifier([], {}), SQLiteStorage(tmp_path / "hub.db")), log)
    done = threading.Event()

    def handler_while_logging():
        with log._lock:  # what the main thread holds when the signal lands mid-write
            service.stop()
        done.set()

    threading.Thread(target=handler_while_logging, daemon=True).start()
    assert done.wait(10), "stop() waited on the log's lock"
    assert service.stopping.is_set()


def test_one_hub_per_database(tmp_path, broker, keys):
    """A second hub (or `hub prune`) on a database a hub is writing is refused, naming the holder;
    after a kill -9 the lock is gone with the process."""
    first = start_hub(tmp_path, broker, keys)
    try:
        second = subprocess.run([str(LINKSEAL), "hub", "run", "--broker", broker.url, "--keys", str(keys.path),
                                 "--insecure-plaintext", "--db", str(first.db)],
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 2, second.stderr
        assert f"another hub (pid {first.process.pid})" in second.stderr and "Traceback" not in second.stderr
        prune = subprocess.run([str(LINKSEAL), "hub", "prune", "--db", str(first.db)], capture_output=True,
                               text=True, timeout=60)
        assert prune.returncode == 2 and f"pid {first.process.pid}" in prune.stderr
        # The same file through another name: a symlink, and a hard link in another directory.
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "sym.db").symlink_to(first.db)
        os.link(first.db, tmp_path / "elsewhere" / "hard.db")
        for other in ("sym.db", "hard.db"):
            again = subprocess.run([str(LINKSEAL), "hub", "run", "--broker", broker.url, "--keys", str(keys.path),
                                    "--insecure-plaintext", "--db", str(tmp_path / "elsewhere" / other)],
                                   capture_output=True, text=True, timeout=60)
            assert again.returncode == 2 and "another hub" in again.stderr, (other, again.stderr)
        assert first.process.poll() is None  # the first one runs on
    finally:
        first.stop()  # SIGKILL
    again = start_hub(tmp_path, broker, keys, name="hub-again")
    again.stop()
    import socket

    with socket.socket() as taken:  # a metrics port another process listens on
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        metrics = subprocess.run([str(LINKSEAL), "hub", "run", "--broker", broker.url, "--keys", str(keys.path),
                                  "--insecure-plaintext", "--db", str(tmp_path / "other.db"), "--metrics",
                                  f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=60)
    assert metrics.returncode == 2 and f"--metrics 127.0.0.1:{port}: cannot listen" in metrics.stderr


def test_two_hubs_with_one_client_id_are_told_apart_from_a_flaky_broker(tmp_path, broker, keys):
    """Two hubs on different databases but the same client id knock each other off the broker
    (MQTT 3.1.1 allows one session per client id): at least one of them says so."""
    first = start_hub(tmp_path, broker, keys)
    second = HubProcess(broker, keys.path, tmp_path / "second.db", tmp_path / "second.log").start()
    try:
        wait_for(lambda: any(e["event"] == "client_id_conflict" for hub in (first, second) for e in hub.events()),
                 60, "a client_id_conflict line")
    finally:
        first.stop()
        second.stop()
    line = next(e for hub in (first, second) for e in hub.events() if e["event"] == "client_id_conflict")
    assert line["client_id"] == "linkseal-hub" and "same client id" in line["note"]
