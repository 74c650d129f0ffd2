"""The outbox's delivery side: one thread per sink moves stored records inward, oldest first.

Each sink has a cursor in the hub's database (the id of the last record it acknowledged).
A forwarder reads the records after its cursor, hands them to its sink, and moves the
cursor only when the sink has acknowledged all of them (written to the database at least
every CURSOR_SAVE_S while busy, and whenever it runs out of work). After a crash or a sink outage it
starts again from the cursor: nothing undelivered is skipped, and what was delivered but not
yet marked is delivered again under the same id. Verification never waits for a sink; only
when a sink's backlog passes the configured bound does the ingest path stop acknowledging
upstream (HubService), so the broker holds the rest.
"""

import threading
import time

from hub.service.delivery.sinks import SinkError
from hub.service.storage.sqlite import Outbox, passing_fault

BATCH = 1000  # records per delivery
LINGER_S = 0.1  # a partial batch waits this long for more records: fewer, fuller deliveries under load
CURSOR_SAVE_S = 0.5  # how often a busy forwarder writes its cursor: a crash re-delivers at most this much


class Forwarder:
    def __init__(self, name: str, sink, db_path, log, stopping: threading.Event, backoff_max: float = 30.0,
                 seal_key: bytes | None = None):
        self.name = name
        self.sink = sink
        self.outbox = Outbox(db_path, seal_key)  # this thread's own connection; it seals the cursor it moves
        self._observer = Outbox(db_path)  # for backlog(), from the log and metrics threads
        self._observer_lock = threading.Lock()
        self.log = log
        self.wake = threading.Event()  # set by the ingest path after each commit
        self.stopping = stopping
        self.backoff_max = backoff_max
        self.up = None  # unknown until the first delivery
        self.delivered = 0  # records acknowledged by the sink since start
        self.cursor = self.outbox.cursor(name)
        self._saved_cursor, self._saved_at = self.cursor, time.monotonic()
        self.thread = threading.Thread(target=self._run, name=f"forward {name}", daemon=True)

    def start(self) -> "Forwarder":
        self.thread.start()
        return self

    def _run(self):
        delay = 1.0
        while not self.stopping.is_set():
            try:
                delay = self._step(delay)
            except Exception as exc:  # the database full or locked: wait it out, as the ingest path does
                if passing_fault(exc) is None:
                    raise
                self.stopping.wait(1.0)
        try:
            self._save_cursor()
        except Exception as exc:
            if passing_fault(exc) is None:
                raise  # else a lost cursor update only means records delivered again

    def _step(self, delay: float) -> float:
        """One delivery, or a wait for work; returns the backoff delay for the next failure."""
        self.wake.clear()  # before reading: a commit after this read sets it again
        records = self.outbox.undelivered(self.cursor, BATCH)
        if not records:
            self._save_cursor()
            self.wake.wait(1.0)
            return delay
        young = LINGER_S - (time.time() - records[0].verified_at)
        if len(records) < BATCH and young > 0:
            self.stopping.wait(young)
            records = self.outbox.undelivered(self.cursor, BATCH)
        try:
            self.sink.deliver(records)
        except SinkError as exc:
            if self.up is not False:
                self.log("sink_down", sink=self.name, error=str(exc), backlog=self.outbox.backlog(self.cursor)[0],
                         retry_in_s=delay)
            self.up = False
            self.stopping.wait(delay)
            return min(delay * 2, self.backoff_max)
        if self.up is not True:
            self.log("sink_up", sink=self.name, from_record=records[0].id)
        self.up = True
        self.cursor = records[-1].id
        self.delivered += len(records)
        if time.monotonic() - self._saved_at >= CURSOR_SAVE_S:
            self._save_cursor()
        return 1.0

    def _save_cursor(self):
        # Written now and then rather than after every batch: each write takes the database's
        # write lock beside the ingest path, and a lost update only means records delivered again.
        if self.cursor != self._saved_cursor:
            self.outbox.mark_delivered(self.name, self.cursor)
            self._saved_cursor = self.cursor
        self._saved_at = time.monotonic()

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)
        self.sink.close()
        self.outbox.close()
        self._observer.close()

    def backlog(self) -> tuple[int, float | None]:
        """(records not yet delivered, arrival time of the oldest of them or None); any thread."""
        with self._observer_lock:
            return self._observer.backlog(self.cursor)


def wait_for_room(forwarders, bound: int, stopping: threading.Event, log, last_id) -> None:
    """Block the ingest path while any sink's backlog is past the bound (nothing is dropped:
    unacknowledged messages stay with the broker)."""
    def worst():
        newest = last_id()
        return max(((newest - f.cursor, f.name) for f in forwarders), default=(0, None))

    backlog, name = worst()
    if backlog < bound:
        return
    log("backlog_full", sink=name, backlog=backlog, bound=bound, action="not acknowledging upstream")
    while not stopping.is_set():
        stopping.wait(0.5)
        backlog, name = worst()
        if backlog < bound:
            log("backlog_below_bound", sink=name, backlog=backlog, bound=bound)
            return
