"""The operator console (hub/service/console/server.py).

console_api_p95_ms: the 95th percentile time of /api/v1/links and /api/v1/devices (a search)
over a store of 10,000 devices with a day of counters (links per minute; devices per hour,
the rows a day leaves per device after roll-up, docs/hub.md), 40 requests each, with the
time of `hub report --json` on the same store beside it as the reference.

hub_ingest_ratio_with_console: bench_ingest's ratio (hub frames/s over a bare subscriber's)
with one browser-like client holding the live stream open and a poller reading
/api/v1/links once a second throughout (target >= 0.8).
"""

import json
import random
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from agent import Sealer, topic_for
from bench.bench_ingest import bare_subscriber_rate, sealed_traffic
from hardware.link_registry import links_by_code
from hub.core.verifier import DeviceKeys, Verifier
from hub.keys.keyfile import KeyFile
from hub.service.console.server import ConsoleServer
from hub.service.ingest import Ingest
from hub.service.storage.sqlite import SQLiteStorage
from tools.services import LINKSEAL, HubProcess, Mosquitto, frames_seen, publish, wait_for

DEVICES = 10_000
REQUESTS = 40


def build_store(path: Path) -> None:
    """10k devices through the real ingest path (state rows, statuses), then a day of counts."""
    names = {code: link.name for code, link in links_by_code().items()}
    link_names = sorted(names.values())
    devices = [DeviceKeys(f"dev-{i:05d}", {0: bytes(32)}, link_names[i % len(link_names)]) for i in range(DEVICES)]
    storage = SQLiteStorage(path)
    ingest = Ingest(Verifier(devices, names), storage)
    day = int(time.time() // 86400 - 1) * 86400
    for i, spec in enumerate(devices):
        sealer = Sealer(spec.device_id, bytes(32), link=spec.link)
        for _ in range(3):
            ingest.handle(topic_for(spec.device_id), sealer.seal(b"x"), day + i % 86400)
    ingest.commit()
    rng = random.Random(1)
    rows = []
    for minute in range(day, day + 86400, 60):
        for link in link_names:
            rows += [(minute, "link", link, "valid", 600), (minute, "link", link, "lost", rng.randrange(20))]
    for spec in devices:
        for hour in range(day, day + 86400, 3600):
            rows += [(hour, "device", spec.device_id, "valid", 360), (hour, "device", spec.device_id, "lost", 2)]
    storage.db.execute("BEGIN")
    storage.db.executemany("INSERT INTO counts VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET value = value + "
                           "excluded.value", rows)
    storage.db.execute("COMMIT")
    storage.close()


def p95_ms(url: str) -> float:
    times = []
    for _ in range(REQUESTS):
        start = time.perf_counter()
        with urllib.request.urlopen(url, timeout=120) as response:
            response.read()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.quantiles(times, n=20)[18]


def api_figures(tmp: Path) -> None:
    db = tmp / "console.db"
    build_store(db)
    start = time.perf_counter()
    subprocess.run([str(LINKSEAL), "hub", "report", "--db", str(db), "--json"], check=True, capture_output=True)
    report_ms = (time.perf_counter() - start) * 1000
    server = ConsoleServer(db, "127.0.0.1", 0).start()
    try:
        links = p95_ms(f"http://{server.address}/api/v1/links")
        devices = p95_ms(f"http://{server.address}/api/v1/devices?q=dev-0012&limit=100")
    finally:
        server.stop()
    print(json.dumps({"figure": "console_api_p95_ms", "links": round(links, 1), "devices": round(devices, 1),
                      "hub_report_json_ms": round(report_ms, 1), "devices_in_store": DEVICES, "requests": REQUESTS,
                      "note": "links per minute and devices per hour for a day; hub report includes process start"}))


def ingest_with_console(tmp: Path) -> None:
    keyfile = KeyFile.create(tmp / "ingest.keys")
    traffic = sealed_traffic(keyfile)
    (tmp / "broker").mkdir()
    broker = Mosquitto(tmp / "broker").start_on_a_free_port()
    try:
        bare = bare_subscriber_rate(broker, traffic)
        hub = HubProcess(broker, keyfile.path, tmp / "ingest.db", tmp / "ingest.log", "--console", "127.0.0.1:0").start()
        stop = threading.Event()
        try:
            hub.wait_connected()
            address = wait_for(lambda: next((e["address"] for e in hub.events() if e["event"] == "console"), None),
                               30, "the console")
            stream = urllib.request.urlopen(f"http://{address}/api/v1/stream?after=0", timeout=60)  # held open

            def poll():  # a browser tab on the Links page refreshing once a second
                while not stop.wait(1.0):
                    urllib.request.urlopen(f"http://{address}/api/v1/links", timeout=60).read()

            poller = threading.Thread(target=poll, daemon=True)
            poller.start()
            start = time.perf_counter()
            publish(broker.port, traffic)
            wait_for(lambda: frames_seen(hub.db) >= len(traffic), 300, "the hub to store every frame")
            rate = len(traffic) / (time.perf_counter() - start)
            stream.close()
        finally:
            stop.set()
            hub.stop()
    finally:
        broker.stop()
    print(json.dumps({"figure": "hub_ingest_ratio_with_console", "value": round(rate / bare, 3), "target": ">= 0.8",
                      "hub_frames_per_s": round(rate), "bare_subscriber_per_s": round(bare), "frames": len(traffic),
                      "console_clients": "one live stream held open, one Links poller at 1/s"}))


def main():
    with tempfile.TemporaryDirectory() as tmp:
        api_figures(Path(tmp))
        ingest_with_console(Path(tmp))


if __name__ == "__main__":
    main()
