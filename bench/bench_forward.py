"""The hub as a gateway: forwarding inward and bounded storage.

hub_ingest_ratio_with_forward: as hub_ingest_ratio, with an MQTT sink (a second Mosquitto)
  and a PostgreSQL sink configured: frames/s verified and committed over what a bare counting
  subscriber receives from the same publisher in the same run (target >= 0.8, 0 lost: every
  record in PostgreSQL and acknowledged by the second broker).
forward_lag_p99_s: at a steady publish rate, device publish -> verified record at a consumer of
  the MQTT sink; reference: a bare paho publisher -> subscriber through one broker at that rate.
forward_drain_records_per_s: after a 60 s outage of both sinks under steady load, the backlog
  drain rate of each; reference: a bare paho publisher of as many records (QoS 1), and a bare
  psycopg COPY of the same rows, in the same run.
db_bytes_per_device_steady and prune_pause_max_s: a steady stream (injected clock) with
  retention on; the file size per device at each simulated hour levels off; the longest
  retention step is the longest ingest pause pruning causes.
"""

import json
import sqlite3
import statistics
import tempfile
import threading
import time
from contextlib import closing
from pathlib import Path

import paho.mqtt.client as mqtt

from agent import Sealer, topic_for
from bench.bench_ingest import bare_subscriber_rate, sealed_traffic
from hardware.link_registry import links_by_code
from hub.core.verifier import DeviceKeys, Verifier
from hub.keys.keyfile import KeyFile
from hub.service.ingest import Ingest
from hub.service.delivery.sinks import PostgresSink
from hub.service.storage.sqlite import DAY, HOUR, Retention, SQLiteStorage, StoredRecord
from tools.services import HubProcess, Mosquitto, PostgresDatabase, Subscriber, frames_seen, publish, wait_for

FAST = "[rate_limits]\ndefault = { rate = 100000, burst = 100000 }\n"
STEADY_RATE = 500  # frames per second for the lag and outage figures
OUTAGE_S = 60


def broker_in(tmp: Path, name: str) -> Mosquitto:
    (tmp / name).mkdir()
    return Mosquitto(tmp / name).start_on_a_free_port()


def pg_count(database) -> int:
    if database.query("SELECT to_regclass('linkseal_records')")[0][0] is None:
        return 0
    return database.query("SELECT COUNT(*) FROM linkseal_records")[0][0]


def start_hub(tmp, name, broker, keyfile, sink_broker, database):
    config = tmp / f"{name}.toml"
    config.write_text(FAST + f'[mqtt]\nclient_id = "bench-{name}"\n')  # a fresh session per hub
    hub = HubProcess(broker, keyfile.path, tmp / f"{name}.db", tmp / f"{name}.log", "--forward", sink_broker.url,
                     "--forward", database.url, "--config", config).start()
    hub.wait_connected()
    return hub


def ingest_ratio(tmp, broker, sink_broker, database):
    keyfile = KeyFile.create(tmp / "ratio.keys")
    traffic = sealed_traffic(keyfile)
    bare = bare_subscriber_rate(broker, traffic)
    hub = start_hub(tmp, "ratio", broker, keyfile, sink_broker, database)
    try:
        start = time.perf_counter()
        publish(broker.port, traffic)
        wait_for(lambda: frames_seen(hub.db) >= len(traffic), 300, "the hub to commit every frame")
        rate = len(traffic) / (time.perf_counter() - start)
        # Delivered: PostgreSQL holds every record, and the inner broker acknowledged every one
        # (both sinks' cursors reach the last record). No consumer runs on the inner broker here:
        # on 2 cores its CPU would be charged to the hub.
        wait_for(lambda: pg_count(database) >= len(traffic), 300, "PostgreSQL to have every record")
        wait_for(lambda: sink_cursors(hub.db) == {len(traffic)}, 300, "both sinks to acknowledge every record")
    finally:
        hub.stop()
    print(json.dumps({"figure": "hub_ingest_ratio_with_forward", "value": round(rate / bare, 3), "target": ">= 0.8",
                      "hub_frames_per_s": round(rate), "bare_subscriber_per_s": round(bare), "frames": len(traffic),
                      "lost_by_hub": len(traffic) - pg_count(database),
                      "acknowledged_by": {"postgresql": pg_count(database), "mqtt_broker": len(traffic)}}))


def sink_cursors(db) -> set:
    with closing(sqlite3.connect(db)) as conn:
        return {cursor for (cursor,) in conn.execute("SELECT delivered_upto FROM sinks")}


def steady_publisher(port, frames, rate, sent_at: dict, stop: threading.Event | None = None):
    """Publish (topic, data, key) at `rate` per second; sent_at[key] = time of the publish call."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-steady-{time.monotonic_ns()}")
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    start = time.perf_counter()
    infos = []
    for i, (topic, data, key) in enumerate(frames):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)  # pacing the load, not synchronisation
        sent_at[key] = time.time()
        infos.append(client.publish(topic, data, qos=1))
    for info in infos:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()


class TimedSubscriber(Subscriber):
    """Subscriber that notes when each message arrived."""

    def __init__(self, port, topic, persistent=False):
        self.arrivals = []
        super().__init__(port, topic, persistent)

    def _on_message(self, client, userdata, message):
        now = time.time()
        super()._on_message(client, userdata, message)
        with self._lock:
            self.arrivals.append(now)


def p99(values):
    return statistics.quantiles(values, n=100)[98]


def steady_frames(keyfile, devices, count, epoch=1):
    sealers = [Sealer(d, bytes.fromhex(keyfile.provision(d, "wifi", save=False)["key"]), link="wifi", epoch=epoch)
               for d in devices]
    keyfile.save()
    frames = []
    for i in range(count):
        s = sealers[i % len(sealers)]
        seq = s.seq
        frames.append((topic_for(s.device_id), s.seal(b'{"hr": 71}'), f"{s.device_id}/{epoch}/{seq}"))
    return frames


def forward_lag(tmp, broker, sink_broker, database):
    keyfile = KeyFile.create(tmp / "lag.keys")
    frames = steady_frames(keyfile, [f"bed-{i}" for i in range(50)], STEADY_RATE * 20)
    # Reference: a bare publisher -> subscriber through one broker, the same frames at the same rate.
    bare_sent, bare = {}, TimedSubscriber(broker.port, "linkseal/v1/+/rec")
    steady_publisher(broker.port, frames, STEADY_RATE, bare_sent)
    wait_for(lambda: len(bare.received()) >= len(frames), 60, "the bare subscriber")
    bare.close()
    keys_in_order = [key for _, _, key in frames]
    bare_lags = [arrived - bare_sent[key] for key, arrived in zip(keys_in_order, bare.arrivals)]
    consumer = TimedSubscriber(sink_broker.port, "linkseal/verified/#")
    hub = start_hub(tmp, "lag", broker, keyfile, sink_broker, database)
    sent = {}
    try:
        steady_publisher(broker.port, frames, STEADY_RATE, sent)
        wait_for(lambda: len(consumer.received()) >= len(frames), 120, "every record at the consumer")
    finally:
        hub.stop()
        consumer.close()
    lags = [arrived - sent[json.loads(payload)["id"]] for (_, payload), arrived in zip(consumer.received(),
                                                                                         consumer.arrivals)]
    print(json.dumps({"figure": "forward_lag_p99_s", "value": round(p99(lags), 4), "median_s": round(
        statistics.median(lags), 4), "reference_bare_p99_s": round(p99(bare_lags), 4), "rate_per_s": STEADY_RATE,
        "records": len(lags), "path": "device publish -> broker -> hub verify+commit -> MQTT sink -> consumer"}))


def outage_drain(tmp, broker, sink_broker, database):
    keyfile = KeyFile.create(tmp / "outage.keys")
    frames = steady_frames(keyfile, [f"pump-{i}" for i in range(50)], STEADY_RATE * OUTAGE_S)
    consumer = TimedSubscriber(sink_broker.port, "linkseal/verified/#", persistent=True)
    hub = start_hub(tmp, "outage", broker, keyfile, sink_broker, database)
    try:
        sink_broker.stop()
        database.refuse_connections(True)
        steady_publisher(broker.port, frames, STEADY_RATE, {})  # 60 s of steady load, both sinks down
        wait_for(lambda: frames_seen(hub.db) >= len(frames), 120, "the hub to commit the outage's records")
        database.refuse_connections(False)
        sink_broker.start()
        back, back_wall = time.perf_counter(), time.time()
        wait_for(lambda: pg_count(database) >= len(frames), 300, "PostgreSQL to drain")
        pg_drain = len(frames) / (time.perf_counter() - back)
        wait_for(lambda: len(consumer.received()) >= len(frames), 300, "the MQTT sink to drain")
        mqtt_drain = len(frames) / (consumer.arrivals[len(frames) - 1] - back_wall)
    finally:
        hub.stop()
        consumer.close()
    # References in the same run: a bare paho publisher of as many records, a bare COPY of the same rows.
    start = time.perf_counter()
    publish(sink_broker.port, [(f"linkseal/verified/{key.split('/')[0]}", data) for _, data, key in frames])
    bare_publish = len(frames) / (time.perf_counter() - start)
    rows = [StoredRecord(i, key.split("/")[0], 2, i, "wifi", None, time.time(), data)
            for i, (_, data, key) in enumerate(frames)]
    sink = PostgresSink(database.url)
    start = time.perf_counter()
    for i in range(0, len(rows), 1000):
        sink.deliver(rows[i:i + 1000])
    bare_copy = len(rows) / (time.perf_counter() - start)
    sink.close()
    print(json.dumps({"figure": "forward_drain_records_per_s", "outage_s": OUTAGE_S, "backlog_records": len(frames),
                      "mqtt": round(mqtt_drain), "mqtt_reference_bare_publisher": round(bare_publish),
                      "mqtt_ratio": round(mqtt_drain / bare_publish, 3), "postgresql": round(pg_drain),
                      "postgresql_reference_bare_copy": round(bare_copy), "postgresql_ratio": round(pg_drain / bare_copy,
                                                                                                     3)}))


def steady_storage(tmp):
    """Steady load with retention (injected clock, scaled-down periods so every tier turns over):
    file size per device each simulated hour, and the longest retention step."""
    devices = [f"meter-{i}" for i in range(200)]
    key = bytes(range(32))
    verifier = Verifier([DeviceKeys(d, {0: key}, "wifi", 16) for d in devices],
                        {code: link.name for code, link in links_by_code().items()})
    db = tmp / "steady.db"
    ingest = Ingest(verifier, SQLiteStorage(db))
    sealers = [Sealer(d, key, link="wifi", epoch=1) for d in devices]
    retention = Retention(records=HOUR, minute_counts=2 * HOUR, hourly_counts=6 * HOUR, device_counts=DAY, events=HOUR)
    t, pauses, curve = 1_700_000_000.0, [], []
    for minute in range(48 * 60):  # two simulated days, each device one record every 30 s
        for second in (0, 30):
            for sealer in sealers:
                ingest.handle(topic_for(sealer.device_id), sealer.seal(b'{"kwh": 1234.5, "v": 229.8}'), t + second)
            ingest.commit()
        t += 60
        while True:  # as hub run does: a step, then the next after the next batch while there is work
            started = time.perf_counter()
            done = ingest.storage.prune_step(t, retention)
            pauses.append(time.perf_counter() - started)
            if not any(done.values()):
                break
        if minute % 60 == 59:
            ingest.storage.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            curve.append(round(db.stat().st_size / len(devices)))
    ingest.storage.close()
    print(json.dumps({"figure": "db_bytes_per_device_steady", "value": curve[-1], "last_hours": curve[-8:],
                      "hour_6": curve[5], "hour_24": curve[23], "devices": len(devices), "records_per_device_per_s":
                      1 / 30, "retention_s": {"records": retention.records, "minute_counts": retention.minute_counts,
                                              "hourly_counts": retention.hourly_counts,
                                              "device_counts": retention.device_counts},
                      "note": "simulated clock; levels off once the longest retention period has turned over"}))
    print(json.dumps({"figure": "prune_pause_max_s", "value": round(max(pauses), 4),
                      "p99_s": round(p99(pauses), 4), "steps": len(pauses), "rows_per_step_at_most": 2000}))


def main():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        broker, sink_broker = broker_in(tmp, "upstream"), broker_in(tmp, "inner")
        database = PostgresDatabase("linkseal_bench")
        try:
            ingest_ratio(tmp, broker, sink_broker, database)
            database.execute("TRUNCATE linkseal_records")
            forward_lag(tmp, broker, sink_broker, database)
            database.execute("TRUNCATE linkseal_records")
            outage_drain(tmp, broker, sink_broker, database)
        finally:
            broker.stop()
            sink_broker.stop()
            database.drop()
        steady_storage(tmp)


if __name__ == "__main__":
    main()
