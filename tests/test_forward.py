"""The hub as a gateway: exactly the authentic records go inward, to a real second Mosquitto and
a real PostgreSQL, at least once (exactly once in PostgreSQL), through crashes and outages."""

import base64
import json
import re
import signal
import sqlite3
import urllib.request

from agent import Sealer, topic_for
from agent import frame as wire
from agent.sealer import status_topic_for
from agent.status import BIRTH, status_payload
from simulator.run import Scenario, generate, label
from tools.services import HubProcess, Subscriber, frames_seen, publish, stored_report, wait_for

VERIFIED_KEYS = {"id", "device", "link", "epoch", "seq", "device_time_ms", "verified_at", "payload_b64"}


def hub_with_sinks(tmp_path, broker, keyfile, *sinks, settings="", name="hub", extra=()):
    """A hub forwarding to the sinks; its hub.toml lifts the rate limit (streams here come at once)."""
    config = tmp_path / f"{name}.toml"
    config.write_text("[rate_limits]\ndefault = { rate = 100000, burst = 100000 }\n" + settings)
    args = [arg for url in sinks for arg in ("--forward", url)] + ["--config", config, *extra]
    hub = HubProcess(broker, keyfile.path, tmp_path / "hub.db", tmp_path / f"{name}.log", *args).start()
    hub.wait_connected()
    return hub


def attacked_capture(keyfile):
    """Messages with forgeries, replays, duplicates, corruption and unknown devices, and the
    records the ground truth says are authentic: id -> payload."""
    generated = generate(Scenario(devices=6, links=("wifi", "lora"), duration=60, rate=5, seed=5,
                                  profiles={"wifi": {"duplicate": 0.05, "burst_rate": 0.05, "jitter_ms": 200.0}}),
                         keyfile=keyfile)
    labelled, _ = label(generated.events, generated.device_links)
    valid = {}
    for _, topic, data, _, expected in labelled:
        if expected == "valid":
            _, _, epoch, seq, _, start, end, _ = wire.decode(data)
            valid[f"{topic.split('/')[2]}/{epoch}/{seq}"] = data[start:end]
    outcomes = {expected for *_, expected in labelled}
    assert {"forged", "duplicate", "corrupt", "unknown_device"} <= outcomes, outcomes
    # Replays: a device's first records again, once more than the replay window (1024) lies between.
    sealer = Sealer("pump-r", bytes.fromhex(keyfile.provision("pump-r", "wifi")["key"]), link="wifi", epoch=1)
    stream = [(topic_for("pump-r"), sealer.seal(b"r%d" % i)) for i in range(1100)]
    valid.update({f"pump-r/1/{i}": b"r%d" % i for i in range(1100)})
    return [(topic, data) for _, topic, data, _, _ in labelled] + stream + stream[:6], valid


def pg_records(postgres) -> dict:
    if postgres.query("SELECT to_regclass('linkseal_records')")[0][0] is None:
        return {}  # the hub creates the table with its first delivery
    rows = postgres.query("SELECT device, epoch, seq, payload FROM linkseal_records")
    assert len(rows) == len({(d, e, s) for d, e, s, _ in rows})
    return {f"{d}/{e}/{s}": bytes(p) for d, e, s, p in rows}


def mqtt_records(subscriber) -> list:
    out = []
    for topic, payload in subscriber.received():
        doc = json.loads(payload)
        assert set(doc) == VERIFIED_KEYS, doc
        assert topic == f"linkseal/verified/{doc['device']}"
        assert doc["id"] == f"{doc['device']}/{doc['epoch']}/{doc['seq']}"
        out.append((doc["id"], base64.b64decode(doc["payload_b64"])))
    return out


def test_only_authentic_records_leave_the_hub(tmp_path, broker, sink_broker, postgres, keys):
    messages, valid = attacked_capture(keys)
    device = sorted(keys.devices)[0]
    config = keys.device_config(device)
    sealer = Sealer(device, bytes.fromhex(config["key"]), link=config["link"], epoch=9)
    status = (status_topic_for(device), sealer.seal_status(status_payload(BIRTH, sealer, 0, 0)))
    consumer = Subscriber(sink_broker.port, "linkseal/verified/#")
    hub = hub_with_sinks(tmp_path, broker, keys, sink_broker.url, postgres.url)
    try:
        publish(broker.port, messages + [status])
        wait_for(lambda: len(pg_records(postgres)) == len(valid), 60, "PostgreSQL to hold every valid record")
        wait_for(lambda: len(consumer.received()) >= len(valid), 60, "the MQTT sink to get every valid record")
        hub.signal(signal.SIGTERM)
        assert hub.wait() == 0
    finally:
        hub.stop()
        consumer.close()
    links = stored_report(hub.db)["links"]
    assert sum(link["replay"] for link in links.values()) == 6 and sum(link["forged"] for link in links.values()) > 0
    assert pg_records(postgres) == valid
    forwarded = mqtt_records(consumer)
    assert dict(forwarded) == valid and len(forwarded) == len(valid)  # nothing else, and each once here
    link_of = dict(postgres.query("SELECT device, link FROM linkseal_records"))
    assert set(link_of.values()) == {"wifi", "lora"}


def test_kill_9_between_commit_and_delivery_loses_and_doubles_nothing(tmp_path, broker, sink_broker, postgres, keys):
    sealers = [Sealer(d, bytes.fromhex(keys.provision(d, "wifi")["key"]), link="wifi", epoch=1)
               for d in ("pump-1", "pump-2")]
    messages = [(topic_for(s.device_id), s.seal(b"r%d" % i)) for i in range(1500) for s in sealers]
    valid = {f"{s.device_id}/1/{i}" for i in range(1500) for s in sealers}
    consumer = Subscriber(sink_broker.port, "linkseal/verified/#", persistent=True)
    # The sink broker is down, so records are committed but cannot be delivered when the hub dies.
    sink_broker.stop()
    hub = hub_with_sinks(tmp_path, broker, keys, sink_broker.url, postgres.url)
    try:
        publish(broker.port, messages)
        wait_for(lambda: frames_seen(hub.db) == len(messages), 60, "every frame committed")
        wait_for(lambda: len(pg_records(postgres)) > 0, 30, "PostgreSQL delivery to start")
        hub.stop()  # SIGKILL, mid-delivery for PostgreSQL, before any delivery for MQTT
        sink_broker.start()  # the consumer's session (and subscription) comes back with it
        hub = hub_with_sinks(tmp_path, broker, keys, sink_broker.url, postgres.url, name="hub-2")
        wait_for(lambda: len(pg_records(postgres)) == len(valid), 60, "PostgreSQL to catch up")
        wait_for(lambda: {key for key, _ in mqtt_records(consumer)} >= valid, 60, "the MQTT sink to catch up")
    finally:
        hub.stop()
        consumer.close()
    assert set(pg_records(postgres)) == valid
    ids = [key for key, _ in mqtt_records(consumer)]
    assert set(ids) == valid
    # Oldest first per device: each device's sequence numbers arrive in order.
    for device in ("pump-1", "pump-2"):
        seqs = [int(key.rsplit("/", 1)[1]) for key in ids if key.startswith(device + "/")]
        assert seqs == sorted(seqs)


def test_a_sink_outage_backs_up_then_drains(tmp_path, broker, sink_broker, postgres, keys):
    sealer = Sealer("pump-1", bytes.fromhex(keys.provision("pump-1", "wifi")["key"]), link="wifi", epoch=1)
    before = [(topic_for("pump-1"), sealer.seal(b"a%d" % i)) for i in range(300)]
    during = [(topic_for("pump-1"), sealer.seal(b"b%d" % i)) for i in range(700)]
    consumer = Subscriber(sink_broker.port, "linkseal/verified/#", persistent=True)
    hub = hub_with_sinks(tmp_path, broker, keys, sink_broker.url, postgres.url, extra=("--metrics", "127.0.0.1:0"))
    address = next(e["metrics"] for e in hub.events() if e["event"] == "started")

    def metric(name, sink):
        text = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
        found = re.search(rf'^{name}{{sink="{re.escape(sink)}"}} (\S+)$', text, re.M)
        return float(found[1]) if found else None

    mqtt_name, pg_name = f"mqtt://127.0.0.1:{sink_broker.port}", postgres.url.replace("postgres@", "")
    try:
        publish(broker.port, before)
        wait_for(lambda: len(pg_records(postgres)) == 300 and len(consumer.received()) >= 300, 60, "first records")
        postgres.refuse_connections(True)
        sink_broker.stop()
        publish(broker.port, during)
        # Verification and upstream acknowledgements go on while both sinks are down.
        wait_for(lambda: frames_seen(hub.db) == 1000, 60, "the hub to keep verifying")
        wait_for(lambda: {e["sink"] for e in hub.events() if e["event"] == "sink_down"} >= {mqtt_name, pg_name}, 60,
                 "sink_down lines")
        assert metric("linkseal_sink_up", pg_name) == 0.0 and metric("linkseal_sink_backlog_records", pg_name) == 700
        assert metric("linkseal_sink_backlog_oldest_age_seconds", mqtt_name) > 0
        postgres.refuse_connections(False)
        sink_broker.start()
        wait_for(lambda: len(pg_records(postgres)) == 1000, 90, "PostgreSQL to drain the backlog")
        wait_for(lambda: len({k for k, _ in mqtt_records(consumer)}) == 1000, 90, "the MQTT sink to drain")
        wait_for(lambda: metric("linkseal_sink_backlog_records", pg_name) == 0, 30, "the backlog metric to drop")
        # The consumer can see the last records before their PUBACKs reach the hub: wait for those.
        wait_for(lambda: metric("linkseal_sink_up", mqtt_name) == 1.0, 30, "the MQTT sink to be marked up")
        assert metric("linkseal_sink_delivered_records_total", pg_name) >= 700
    finally:
        hub.stop()
        consumer.close()
    assert sorted(pg_records(postgres)) == sorted(f"pump-1/1/{i}" for i in range(1000))
    assert any(e["event"] == "sink_up" for e in hub.events())


def test_a_full_backlog_stops_upstream_acknowledgements_and_nothing_is_dropped(tmp_path, broker, sink_broker, keys):
    sealer = Sealer("pump-1", bytes.fromhex(keys.provision("pump-1", "wifi")["key"]), link="wifi", epoch=1)
    messages = [(topic_for("pump-1"), sealer.seal(b"r%d" % i)) for i in range(600)]
    consumer = Subscriber(sink_broker.port, "linkseal/verified/#", persistent=True)
    sink_broker.stop()
    hub = hub_with_sinks(tmp_path, broker, keys, sink_broker.url,
                         settings="[outbox]\nmax_backlog = 100\n[ingest]\nbatch_size = 50\n")
    try:
        publish(broker.port, messages)
        wait_for(lambda: any(e["event"] == "backlog_full" for e in hub.events()), 60, "the backlog bound")
        stalled = frames_seen(hub.db)
        assert stalled < 600  # the rest stays with the broker, unacknowledged
        sink_broker.start()
        wait_for(lambda: frames_seen(hub.db) == 600, 90, "ingest to resume once the sink drains")
        wait_for(lambda: len({k for k, _ in mqtt_records(consumer)}) == 600, 60, "every record delivered")
    finally:
        hub.stop()
        consumer.close()
    assert frames_seen(hub.db) == 600 and stored_report(hub.db)["links"]["wifi"]["valid"] == 600


def test_a_running_hub_deletes_records_once_every_sink_has_them(tmp_path, broker, postgres, keys):
    sealer = Sealer("pump-1", bytes.fromhex(keys.provision("pump-1", "wifi")["key"]), link="wifi", epoch=1)
    hub = hub_with_sinks(tmp_path, broker, keys, postgres.url,
                         settings="[retention]\nrecords = 0\n[outbox]\nprune_interval = 0.2\n")
    try:
        publish(broker.port, [(topic_for("pump-1"), sealer.seal(b"r%d" % i)) for i in range(500)])
        wait_for(lambda: len(pg_records(postgres)) == 500, 60, "PostgreSQL to have every record")
        wait_for(lambda: sqlite3.connect(hub.db).execute("SELECT COUNT(*) FROM records").fetchone()[0] == 0, 30,
                 "the hub to prune what the sink has")
        # The step is logged just after its commit: wait for the line before the kill -9 of stop().
        wait_for(lambda: any(e["event"] == "pruned" for e in hub.events()), 30, "the pruning logged")
    finally:
        hub.stop()
    assert stored_report(hub.db)["links"]["wifi"]["valid"] == 500  # the counts stay
    assert any(e["event"] == "pruned" and e["records"] > 0 for e in hub.events())


def test_a_record_the_sink_broker_refuses_is_never_counted_delivered(tmp_path, broker, keys):
    """The device network's broker configured by `hub broker-config --forward-here`: a
    1,400-byte record becomes a publish of about 2,000 bytes. Under the old limit (1,500, the
    largest frame) Mosquitto drops it and, over MQTT 5, says so in the PUBACK: the sink is down,
    the record stays in the outbox; under the generated limit it is delivered."""
    from hub.keys.broker_config import write_broker_config
    from hub.keys.keyfile import CONSUMER_MQTT_USER, FORWARDER_MQTT_USER
    from hub.service.delivery.sinks import largest_verified_message
    from tools.services import Mosquitto, free_port

    sealer = Sealer("pump-1", bytes.fromhex(keys.provision("pump-1", "wifi")["key"]), link="wifi", epoch=1)
    big = b"x" * 1400
    stream = [(topic_for("pump-1"), sealer.seal(p)) for p in (b"small", big, b"after")]
    port = free_port()
    files = write_broker_config(keys, tmp_path / "sink-conf", port=port, data_dir=tmp_path,
                                forward_here=largest_verified_message())
    generated = files["conf"].read_text()
    assert f"message_size_limit {largest_verified_message()}" in generated and largest_verified_message() > 2000
    (tmp_path / "old").mkdir()
    old = Mosquitto.from_config(tmp_path / "old", port, generated.replace(
        f"message_size_limit {largest_verified_message()}", "message_size_limit 1500")).start()
    login = (CONSUMER_MQTT_USER, files["consumer_password"].read_text().strip())
    consumer = Subscriber(port, "linkseal/verified/#", persistent=True, login=login)
    settings = (f'[[forward]]\nurl = "mqtt://127.0.0.1:{port}"\nusername = "{FORWARDER_MQTT_USER}"\n'
                f'password_file = "{files["forwarder_password"]}"\n')
    hub = hub_with_sinks(tmp_path, broker, keys, settings=settings)
    try:
        publish(broker.port, stream)
        wait_for(lambda: any("packet too large" in e.get("error", "") for e in hub.events()
                             if e["event"] == "sink_down"), 60, "the sink to report the refused publish")
        cursor = sqlite3.connect(hub.db).execute("SELECT delivered_upto FROM sinks").fetchone()[0]
        assert cursor < 2, "the refused record was counted delivered"
        assert "pump-1/1/1" not in dict(mqtt_records(consumer))  # (the batch's later ones may be: at least once)
        old.stop()
        (tmp_path / "new").mkdir()
        new = Mosquitto.from_config(tmp_path / "new", port, generated).start()
        try:
            wait_for(lambda: {k for k, _ in mqtt_records(consumer)} == {"pump-1/1/0", "pump-1/1/1", "pump-1/1/2"},
                     60, "every record delivered under the generated limit")
            assert dict(mqtt_records(consumer))["pump-1/1/1"] == big
        finally:
            hub.stop()
            consumer.close()
            new.stop()
    finally:
        hub.stop()
        old.stop()


def test_postgres_sink_uses_its_tls_and_login_settings_and_a_lock_makes_it_down(tmp_path, broker, postgres, keys):
    """[[forward]] ca_file, cert_file, key_file and password_file are checked at start and used
    (a CA that did not sign the server's certificate fails the connection); a password never
    shows in a log line; a table locked elsewhere makes the sink down, and SIGTERM still stops
    the hub promptly."""
    import psycopg

    from tools.services import HubProcess

    url = postgres.url
    missing = tmp_path / "missing.pem"
    config = tmp_path / "bad.toml"
    config.write_text(f'[[forward]]\nurl = "{url}"\nca_file = "{missing}"\n')
    bad = HubProcess(broker, keys.path, tmp_path / "bad.db", tmp_path / "bad.log", "--config", config).start()
    assert bad.wait() == 2
    assert f"ca_file {missing}: no such file" in bad.log.read_text() and "Traceback" not in bad.log.read_text()

    from hub.keys.pki import init_ca
    init_ca(tmp_path / "other-ca")  # a CA that signed nothing the server has
    password = tmp_path / "pg.password"
    password.write_text("s3cret-not-to-print\n")
    config.write_text(f'[[forward]]\nurl = "{url}?sslmode=require"\nca_file = "{tmp_path / "other-ca" / "ca.pem"}"\n'
                      f'password_file = "{password}"\n')
    sealer = Sealer("pump-1", bytes.fromhex(keys.provision("pump-1", "wifi")["key"]), link="wifi", epoch=1)
    hub = HubProcess(broker, keys.path, tmp_path / "tls.db", tmp_path / "tls.log", "--config", config).start()
    try:
        hub.wait_connected()
        publish(broker.port, [(topic_for("pump-1"), sealer.seal(b"one"))])
        wait_for(lambda: any(e["event"] == "sink_down" for e in hub.events()), 60, "the sink to fail on its CA")
        down = next(e for e in hub.events() if e["event"] == "sink_down")
        assert "certificate" in down["error"] or "SSL" in down["error"], down
    finally:
        hub.stop()
    assert "s3cret-not-to-print" not in hub.log.read_text()

    hub = hub_with_sinks(tmp_path, broker, keys, url, name="locked")
    try:
        publish(broker.port, [(topic_for("pump-1"), sealer.seal(b"two"))])
        wait_for(lambda: len(pg_records(postgres)) == 1, 60, "the first record delivered")
        with psycopg.connect(url) as locker:
            locker.execute("BEGIN")
            locker.execute("LOCK TABLE linkseal_records IN ACCESS EXCLUSIVE MODE")
            publish(broker.port, [(topic_for("pump-1"), sealer.seal(b"three"))])
            wait_for(lambda: any(e["event"] == "sink_down" for e in hub.events()), 60, "the locked sink to be down")
            hub.signal(signal.SIGTERM)
            assert hub.wait(timeout=30) == 0  # not held until the lock goes
            locker.execute("ROLLBACK")
    finally:
        hub.stop()
