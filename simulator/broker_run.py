"""`sim run` through a broker: the arrivals are published, in order, to a real MQTT broker
and verified by an in-process `hub run` (the same HubService, storage and reports).

Without --broker an embedded amqtt broker (MQTT 3.1.1, pure Python, about 2,700 messages/s
here) is started in-process, so nothing has to be installed system-wide for the demo.
"""

import asyncio
import collections
import logging
import os
import socket
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from rich.progress import Progress

from hardware.link_registry import links_by_code
from hub.core.counters import received
from hub.core.report import build_stored_report
from hub.core.verifier import Verifier
from hub.service.config import HubSettings, parse_broker
from hub.service.ingest import Ingest
from shared.log import EventLog
from hub.service.ways_in.mqtt_adapter import HubService
from hub.service.storage.sqlite import SQLiteStorage


class EmbeddedBroker:
    """amqtt on a free loopback port, in a thread of its own."""

    def __init__(self):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._serve, name="amqtt", daemon=True)
        self.ready = threading.Event()
        self.broker = None

    def _serve(self):
        from amqtt.broker import Broker

        asyncio.set_event_loop(self.loop)
        config = {"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
                  "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}}
        self.broker = Broker(config, loop=self.loop)
        self.loop.run_until_complete(self.broker.start())
        self.ready.set()
        self.loop.run_forever()

    def start(self) -> "EmbeddedBroker":
        logging.getLogger("amqtt").setLevel(logging.CRITICAL)  # its shutdown is noisy, not wrong
        logging.getLogger("transitions").setLevel(logging.CRITICAL)
        self.thread.start()
        if not self.ready.wait(30):
            raise RuntimeError("the embedded amqtt broker did not start")
        return self

    def stop(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.broker.shutdown(), self.loop).result(15)
        except Exception:  # noqa: BLE001  amqtt cancels its own tasks on the way down
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


def verify_through_broker(devices, labelled, broker_url, out_dir: Path, console) -> tuple[dict, list | None]:
    """Publish every arrival in order; return the hub's stored report once all are committed,
    and its outcome for each arrival (None if the broker redelivered or reordered anything)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    db = out_dir / "hub.db"
    for stale in (db, db.with_name("hub.db-wal"), db.with_name("hub.db-shm")):
        stale.unlink(missing_ok=True)
    embedded = EmbeddedBroker().start() if broker_url is None else None
    url = embedded.url if embedded else broker_url
    verifier = Verifier(devices, {code: link.name for code, link in links_by_code().items()})
    outcomes = []  # the hub's outcome for each message, in the order it got them
    ingest = Ingest(verifier, SQLiteStorage(db), on_verdict=lambda verdict: outcomes.append(verdict.outcome))
    settings = HubSettings(client_id=f"linkseal-sim-{os.getpid()}-{time.monotonic_ns()}")
    with open(out_dir / "hub.log", "w") as log_file:
        trace_clock = TraceClock(labelled)
        service = HubService(parse_broker(url), settings, ingest, EventLog(json_lines=True, stream=log_file),
                             clock=trace_clock.now, arrival_clock=trace_clock)
        hub = threading.Thread(target=service.run, kwargs={"handle_signals": False}, name="hub")
        hub.start()
        try:
            if not service.subscribed.wait(30):
                raise RuntimeError(f"the hub could not subscribe at {url} (see {out_dir / 'hub.log'})")
            _publish(url, labelled, console, lambda: ingest_count(ingest))
        finally:
            service.stop()
            hub.join(60)
            if embedded:
                embedded.stop()
    return stored_report(db), (outcomes if len(outcomes) == len(labelled) else None)


def stored_report(db: Path) -> dict:
    """The report over what a run's hub stored."""
    storage = SQLiteStorage(db, create=False)
    try:
        return build_stored_report(storage)
    finally:
        storage.close()


class TraceClock:
    """Each message's arrival time in the trace, not the wall clock of this run: two replays of
    one trace then give the same report, event times included. Identical messages (a link's
    duplicates) take their times in order; one the broker delivers more often than it was
    published keeps the last. now() is the latest time given: retention runs on the trace's
    time line too (on the wall clock, a trace from the past would be pruned as it arrives)."""

    def __init__(self, labelled):
        self.times = {}
        for t, topic, data, _, _ in labelled:
            self.times.setdefault((topic, data), collections.deque()).append(round(t, 6))
        self.last = {}
        self.latest = 0.0

    def now(self) -> float:
        return self.latest

    def __call__(self, topic: str, payload: bytes) -> float:
        key = (topic, payload)
        queued = self.times.get(key)
        if queued:
            self.last[key] = queued.popleft()
            self.latest = max(self.latest, self.last[key])
        return self.last.get(key, 0.0)


def ingest_count(ingest) -> int:
    """Frames the hub has verified so far (read from its counters, from another thread)."""
    verifier = ingest.verifier
    return sum(received(c) for _, c in verifier.links()) + verifier.unknown_device


def _publish(url, labelled, console, committed):
    broker = parse_broker(url)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"linkseal-sim-devices-{os.getpid()}")
    client.max_inflight_messages_set(100)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        with Progress(console=console, transient=True) as progress:
            sending = progress.add_task("publishing", total=len(labelled))
            verified = progress.add_task("verified by the hub", total=len(labelled))
            pending = []
            for _, topic, data, _, _ in labelled:
                pending.append(client.publish(topic, data, qos=1))
                if len(pending) >= 100:
                    for info in pending:
                        info.wait_for_publish(60)
                    progress.advance(sending, len(pending))
                    progress.update(verified, completed=committed())
                    pending = []
            for info in pending:
                info.wait_for_publish(60)
            progress.advance(sending, len(pending))
            deadline = time.monotonic() + 120
            while committed() < len(labelled):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the hub verified {committed()} of {len(labelled)} frames in 120 s")
                progress.update(verified, completed=committed())
                time.sleep(0.05)  # progress display refresh, not synchronisation: the loop tests the count
    finally:
        client.disconnect()
        client.loop_stop()
