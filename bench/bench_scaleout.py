"""Hub workers on RabbitMQ and PostgreSQL (docs/scale-out.md), on this 2-core machine, where the
broker node, the database and the workers share the cores.

scaleout_records_per_s: records verified and committed per second by 1 and by 2 workers
draining a backlog of 40,000 records from 10,000 devices queued in 4 partitions (RabbitMQ
node of the bench's own, MQTT plugin in, quorum queues); the rate is the records over the
span of their commit stamps in PostgreSQL (worker start-up aside).
scaleout_vs_single_hub: the 1-worker rate over the embedded hub's (Mosquitto + SQLite)
draining the same backlog in the same run (bench_ingest's method), over the span of its
records' arrival stamps likewise.
takeover_s: from the kill -9 of the worker holding partition 0, under a steady stream, to
the first record of that partition committed by its successor.
"""

import json
import os
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from bench.bench_ingest import hub_backlog_rate, sealed_traffic
from hub.keys.keyfile import KeyFile
from hub.service.storage.postgres import ensure_schema
from tools.brokers import RabbitMQ
from tools.services import LINKSEAL, Mosquitto, PostgresDatabase, publish, wait_for

PARTITIONS = 4


def start_worker(tmp, rabbit, keyfile, db_url, name):
    log = open(tmp / f"{name}.log", "a")
    return subprocess.Popen([str(LINKSEAL), "hub", "run", "--broker", rabbit.amqp_url, "--keys", str(keyfile.path),
                             "--db", db_url, "--log-json", "--insecure-plaintext"], stdout=log, stderr=log)


def stop(processes):
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(60)


def worker_drain_rate(tmp, rabbit, keyfile, traffic, workers) -> float:
    database = PostgresDatabase("linkseal_bench")
    ensure_schema(database.url)
    try:
        publish(rabbit.port, traffic)  # queued in the partitions: no worker runs yet
        processes = [start_worker(tmp, rabbit, keyfile, database.url, f"drain{workers}-{i}") for i in range(workers)]
        try:
            wait_for(lambda: database.query("SELECT COUNT(*) FROM linkseal_records")[0][0] >= len(traffic), 600,
                     f"{workers} worker(s) to drain the backlog")
        finally:
            stop(processes)
        first, last = database.query("SELECT EXTRACT(EPOCH FROM MIN(verified_at)), EXTRACT(EPOCH FROM MAX(verified_at)) "
                                     "FROM linkseal_records")[0]
        return len(traffic) / float(last - first)
    finally:
        database.drop()


def takeover_seconds(tmp, rabbit, keyfile, traffic) -> float:
    database = PostgresDatabase("linkseal_bench")
    ensure_schema(database.url)
    stopping = threading.Event()

    def stream():  # a steady stream, about 1,000 records a second in bursts of 100
        for start in range(0, len(traffic), 100):
            if stopping.is_set():
                return
            publish(rabbit.port, traffic[start : start + 100])
            time.sleep(0.1)

    processes = [start_worker(tmp, rabbit, keyfile, database.url, f"takeover-{i}") for i in range(2)]
    publisher = threading.Thread(target=stream, daemon=True)
    publisher.start()
    try:
        wait_for(lambda: database.query("SELECT owner FROM linkseal_partitions WHERE partition = 0"), 60,
                 "partition 0 to be taken")
        owner, token = database.query("SELECT owner, token FROM linkseal_partitions WHERE partition = 0")[0]
        pid = int(owner.rsplit(":", 1)[1])
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: database.query("SELECT token FROM linkseal_partitions WHERE partition = 0")[0][0] > token, 60,
                 "another worker to take partition 0")
        query = ("SELECT EXTRACT(EPOCH FROM MIN(r.verified_at)) FROM linkseal_records r JOIN linkseal_devices d "
                 "ON d.device = r.device WHERE d.partition = 0 AND r.verified_at > to_timestamp(%s)")
        first = wait_for(lambda: database.query(query, (killed_at,))[0][0], 60, "the successor's first commit")
        return float(first) - killed_at
    finally:
        stopping.set()
        publisher.join(30)
        stop(processes)
        database.drop()


def main():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        keyfile = KeyFile.create(tmp / "hub.keys")
        traffic = sealed_traffic(keyfile)
        (tmp / "mosquitto").mkdir()
        mosquitto = Mosquitto(tmp / "mosquitto").start_on_a_free_port()
        try:
            hub_backlog_rate(mosquitto, keyfile, traffic, tmp)
        finally:
            mosquitto.stop()
        # Measured like the workers': the records over the span of their arrival stamps.
        first, last = sqlite3.connect(tmp / "drain.db").execute("SELECT MIN(arrival), MAX(arrival) FROM records").fetchone()
        single = len(traffic) / (last - first)
        rabbit = RabbitMQ(tmp / "rabbit").start()
        try:
            subprocess.run([str(LINKSEAL), "hub", "topology", "--broker", rabbit.amqp_url, "--partitions",
                            str(PARTITIONS)], check=True, capture_output=True)
            one = worker_drain_rate(tmp, rabbit, keyfile, traffic, 1)
            two = worker_drain_rate(tmp, rabbit, keyfile, traffic, 2)
            takeover = takeover_seconds(tmp, rabbit, keyfile, traffic)
        finally:
            rabbit.stop()
    context = {"records": len(traffic), "devices": 10_000, "partitions": PARTITIONS,
               "note": "2 cores shared by RabbitMQ, PostgreSQL and the workers"}
    print(json.dumps({"figure": "scaleout_records_per_s", "workers_1": round(one), "workers_2": round(two),
                      "per_worker_with_2": round(two / 2), **context}))
    print(json.dumps({"figure": "scaleout_vs_single_hub", "value": round(one / single, 3),
                      "single_hub_records_per_s": round(single), "workers_1_records_per_s": round(one), **context}))
    print(json.dumps({"figure": "takeover_s", "value": round(takeover, 3),
                      "note": "kill -9 of the worker holding partition 0 under a steady stream, to the first record "
                              "of partition 0 its successor committed; RabbitMQ sees the closed socket at once"}))


if __name__ == "__main__":
    main()
