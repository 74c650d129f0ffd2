"""The relay at work (`linkseal relay serial` and `relay ble`): devices on lines (a serial
port, or each BLE peripheral's Nordic UART Service) to the broker.

One thread per line reads it, sorts what arrives (intake.py) and spools each frame; on a
multi-drop bus (`poll`, one serial line) it is the bus master, polling each device in turn and
writing every acknowledgement itself between polls, so that no two speak at once. The broker
thread publishes the oldest spooled frame, and once the broker's PUBACK came forgets it and
acknowledges it on the line its device last spoke on (point to point at once; on a bus before
the next poll). A damaged frame whose header is whole is published too (the hub counts it
corrupt on its link) but never acknowledged: the device sends it again.
"""

import queue
import threading
import time
from collections import Counter

from firmware.device import serial_link

from .intake import Intake


class Line:
    """One line: its port (pyserial-like: read, write, flush, in_waiting, name) and its intake."""

    def __init__(self, port):
        self.port = port
        self.intake = Intake()
        self.write_lock = threading.Lock()
        self.open = True

    def write(self, data: bytes) -> None:
        with self.write_lock:
            self.port.write(data)
            self.port.flush()

    def read(self) -> bytes:
        # What the line has now, waiting at most the port's timeout for the first byte (a plain
        # read(4096) would wait for all 4096 or the timeout: every packet a timeout late).
        data = self.port.read(1)
        waiting = self.port.in_waiting if data else 0
        return data + self.port.read(waiting) if waiting else data


class Relay:
    def __init__(self, spool, publisher, log, poll=(), answer_timeout_s: float = 0.2):
        self.spool = spool
        self.publisher = publisher
        self.log = log
        self.poll = tuple(poll)
        self.answer_timeout_s = answer_timeout_s
        self.lines = []
        self.route = {}  # device -> the line it last spoke on: where its acknowledgements go
        self.counts = Counter()  # published, acknowledged, duplicates_waiting, refused_full, unpolled, ...
        self.acks = queue.SimpleQueue()  # (device, CRC trailer) for the bus master to write
        self.stopping = threading.Event()
        self.last_frame_at = None
        self.report_every_s = 60.0

    # -- the lines -------------------------------------------------------------------------

    def take(self, line: Line, data: bytes, polled_device=None) -> list:
        """Sort bytes from a line and spool their frames; returns the arrivals."""
        arrivals = line.intake.feed(data)
        for arrival in arrivals:
            if polled_device is not None and arrival.device != polled_device:
                self.counts["unpolled"] += 1  # spoke out of turn, or claims another device: not carried
                continue
            self.route[arrival.device] = line
            if arrival.kind == serial_link.IDLE:
                continue
            self.last_frame_at = time.time()
            outcome = self.spool.put(arrival)
            if outcome == "waiting":
                self.counts["duplicates_waiting"] += 1
            elif outcome == "full":
                self.counts["refused_full"] += 1
        return arrivals

    def _write_acks(self, line: Line) -> None:
        while True:
            try:
                device, trailer = self.acks.get_nowait()
            except queue.Empty:
                return
            line.write(serial_link.packet(serial_link.ACK, device, trailer))

    def _poll_once(self, line: Line, device: str) -> None:
        line.write(serial_link.packet(serial_link.POLL, device))
        deadline = time.monotonic() + self.answer_timeout_s
        while time.monotonic() < deadline and not self.stopping.is_set():
            data = line.read()
            if data and any(a.device == device for a in self.take(line, data, polled_device=device)):
                return
        self.counts["no_answer"] += 1

    def line_loop(self, line: Line) -> None:
        try:
            while not self.stopping.is_set():
                if self.poll:
                    for device in self.poll:
                        self._write_acks(line)
                        self._poll_once(line, device)
                else:
                    data = line.read()
                    if data:
                        self.take(line, data)
        except OSError as exc:  # the port went away (a BLE peripheral disconnected, a USB adapter pulled)
            self.log("line_closed", line=line.port.name, error=str(exc))
        finally:
            line.open = False

    def add_line(self, port) -> threading.Thread:
        line = Line(port)
        self.lines.append(line)
        thread = threading.Thread(target=self.line_loop, args=(line,), name=f"line-{port.name}", daemon=True)
        thread.start()
        return thread

    # -- the broker ------------------------------------------------------------------------

    def _acknowledge(self, device: str, trailer: bytes) -> None:
        if self.poll:
            self.acks.put((device, trailer))
            return
        line = self.route.get(device)
        if line is not None and line.open:  # else the device sends it again and is acknowledged then
            try:
                line.write(serial_link.packet(serial_link.ACK, device, trailer))
            except OSError:
                pass

    def broker_loop(self) -> None:
        next_report = time.monotonic() + self.report_every_s
        while not self.stopping.is_set():
            if time.monotonic() >= next_report:  # the operator's log says what the relay did, every minute
                next_report += self.report_every_s
                self.log("counts", **self.figures())
            arrival = self.spool.oldest(0.2)
            if arrival is None or not self.publisher.publish(arrival.topic, arrival.frame, self.stopping):
                continue
            self.spool.taken()
            self.counts["published"] += 1
            if arrival.intact:
                self.counts["acknowledged"] += 1
                self._acknowledge(arrival.device, arrival.frame[-4:])

    def start(self) -> threading.Thread:
        self.publisher.start()
        broker = threading.Thread(target=self.broker_loop, name="broker", daemon=True)
        broker.start()
        return broker

    def run(self, port) -> int:
        """Relay one serial line until stopped (SIGTERM)."""
        broker = self.start()
        self.log("started", port=port.name, polled=len(self.poll), spooled=self.spool.depth)
        line = Line(port)
        self.lines.append(line)
        try:
            self.line_loop(line)
        finally:
            self.stop(broker)
        return 0

    def stop(self, broker: threading.Thread) -> None:
        self.stopping.set()
        broker.join(15)
        self.publisher.stop()
        self.log("stopped", **self.figures())

    def figures(self) -> dict:
        """Every count, for logs, /metrics and /health."""
        line_counts = Counter()
        for line in self.lines:
            line_counts.update(line.intake.counts)
        return {**{f"line_{k}": v for k, v in sorted(line_counts.items())},
                **dict(sorted(self.counts.items())), "spooled": self.spool.depth, "spool_bytes": self.spool.bytes,
                "publish_failures": self.publisher.failures}
