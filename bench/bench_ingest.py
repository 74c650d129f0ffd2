"""The hub service through a real Mosquitto on loopback.

hub_ingest_ratio: frames/s that `linkseal hub run` verifies and commits, divided by what a
bare paho subscriber that only counts receives from the same publisher in the same run
(target >= 0.8, with zero frames lost). Also the hub's commit latency p50/p99 (from its
Prometheus histogram) and its peak RSS with 10k devices.
"""

import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from agent import Sealer, topic_for
from hub.keys.keyfile import KeyFile
from tools.services import HubProcess, Mosquitto, frames_seen, publish, stored_report, wait_for

DEVICES = 10_000
FRAMES_PER_DEVICE = 4


def sealed_traffic(keyfile):
    sealers = []
    for i in range(DEVICES):
        device = f"ward{i // 100:03d}-bed{i % 100:02d}"
        key = bytes.fromhex(keyfile.provision(device, "wifi", save=False)["key"])
        sealers.append(Sealer(device, key, link="wifi", epoch=1))
    keyfile.save()
    return [(topic_for(s.device_id), s.seal(b'{"hr": 71, "spo2": 97}')) for _ in range(FRAMES_PER_DEVICE)
            for s in sealers]


COUNTER = Path(__file__).resolve().parent / "count_subscriber.py"


def counting_subscriber(broker, expected, client_id, *flags):
    """Start the baseline subscriber process; returns it once it is subscribed."""
    process = subprocess.Popen([sys.executable, str(COUNTER), str(broker.port), str(expected), client_id, *flags],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "subscribed", "the baseline subscriber failed to subscribe"
    return process


def finished_after(process) -> float:
    line = process.stdout.readline().split()
    assert process.wait(300) == 0 and line[0] == "done", "the baseline subscriber failed"
    return float(line[1])


def bare_subscriber_rate(broker, traffic):
    """Frames/s the baseline subscriber receives while the publisher sends."""
    subscriber = counting_subscriber(broker, len(traffic), "bench-bare")
    start = time.perf_counter()
    publish(broker.port, traffic)
    finished_after(subscriber)
    return len(traffic) / (time.perf_counter() - start)


def bare_backlog_rate(broker, traffic):
    """Frames/s the baseline subscriber drains from a backlog the broker queued for its session."""
    counting_subscriber(broker, 0, "bench-drain", "--persistent", "--subscribe-only").wait(30)
    publish(broker.port, traffic)
    return len(traffic) / finished_after(counting_subscriber(broker, len(traffic), "bench-drain", "--persistent"))


def hub_backlog_rate(broker, keyfile, traffic, tmp):
    """Frames/s the hub verifies and commits from a backlog queued while it was stopped."""
    first = HubProcess(broker, keyfile.path, tmp / "drain.db", tmp / "drain1.log").start()
    first.wait_connected()
    first.signal(15)
    first.wait()
    publish(broker.port, traffic)
    hub = HubProcess(broker, keyfile.path, tmp / "drain.db", tmp / "drain2.log").start()
    try:
        hub.wait_connected()
        start = time.perf_counter()
        wait_for(lambda: frames_seen(hub.db) >= len(traffic), 300, "the hub to drain its backlog")
        return len(traffic) / (time.perf_counter() - start)
    finally:
        hub.stop()


def hub_quantile(histogram: dict, q: float) -> float:
    """Upper bound of the bucket holding quantile q of a Prometheus histogram {le: count}."""
    total = histogram[float("inf")]
    for bound in sorted(histogram):
        if histogram[bound] >= q * total:
            return bound
    return float("inf")


def scrape_histogram(address) -> dict:
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
    buckets = {}
    for line in text.splitlines():
        if line.startswith("linkseal_storage_commit_seconds_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets[float(le)] = float(line.rsplit(" ", 1)[1])
    return buckets


def peak_rss(pid) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def main():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        keyfile = KeyFile.create(tmp / "hub.keys")
        traffic = sealed_traffic(keyfile)
        broker_dir = tmp / "broker"
        broker_dir.mkdir()
        broker = Mosquitto(broker_dir).start_on_a_free_port()
        try:
            bare = bare_subscriber_rate(broker, traffic)
            hub = HubProcess(broker, keyfile.path, tmp / "hub.db", tmp / "hub.log", "--metrics", "127.0.0.1:0").start()
            try:
                hub.wait_connected()
                metrics_address = next(e["metrics"] for e in hub.events() if e["event"] == "started")
                start = time.perf_counter()
                publish(broker.port, traffic)
                wait_for(lambda: frames_seen(hub.db) >= len(traffic), 300, "the hub to commit every frame")
                elapsed = time.perf_counter() - start
                histogram = scrape_histogram(metrics_address)
                rss = peak_rss(hub.process.pid)
            finally:
                hub.stop()
            valid = stored_report(hub.db)["links"]["wifi"]["valid"]
            bare_drain = bare_backlog_rate(broker, traffic)
            hub_drain = hub_backlog_rate(broker, keyfile, traffic, tmp)
        finally:
            broker.stop()
    rate = len(traffic) / elapsed
    print(json.dumps({"figure": "hub_ingest_ratio", "value": round(rate / bare, 3), "target": ">= 0.8",
                      "hub_frames_per_s": round(rate), "bare_subscriber_per_s": round(bare),
                      "frames": len(traffic), "lost_by_hub": len(traffic) - valid}))
    print(json.dumps({"figure": "hub_backlog_drain_ratio", "value": round(hub_drain / bare_drain, 3),
                      "hub_frames_per_s": round(hub_drain), "bare_subscriber_per_s": round(bare_drain),
                      "note": "both drain a backlog the broker queued for their session: no publisher limit"}))
    print(json.dumps({"figure": "hub_commit_latency_s", "p50_at_most": hub_quantile(histogram, 0.5),
                      "p99_at_most": hub_quantile(histogram, 0.99), "commits": histogram[float("inf")]}))
    print(json.dumps({"figure": "hub_peak_rss_bytes", "value": rss, "devices": DEVICES}))


if __name__ == "__main__":
    main()
