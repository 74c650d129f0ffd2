"""`linkseal relay serial`: devices on a serial line (RS-485 or a UART) to the broker.

Two threads. The line thread reads the port, sorts what arrives (intake.py) and spools each
frame; on a multi-drop bus (`poll`) it is the bus master, polling each device in turn and
writing every acknowledgement itself between polls, so that no two speak at once. The
broker thread publishes the oldest spooled frame, and once the broker's PUBACK came forgets it
and acknowledges it to its device (point to point, at once; on a bus, before the next poll).
A damaged frame whose header is whole is published too (the hub counts it corrupt on its link)
but never acknowledged: the device sends it again.
"""

import queue
import threading
import time
from collections import Counter

from firmware.device import serial_link

from .intake import Intake


class SerialRelay:
    def __init__(self, port, spool, publisher, log, poll=(), answer_timeout_s: float = 0.2):
        self.port = port  # a pyserial Serial, opened with a short read timeout
        self.spool = spool
        self.publisher = publisher
        self.log = log
        self.poll = tuple(poll)
        self.answer_timeout_s = answer_timeout_s
        self.intake = Intake()
        self.counts = Counter()  # published, acknowledged, duplicates_waiting, refused_full, unpolled
        self.acks = queue.SimpleQueue()  # (device, CRC trailer) for the line thread to write (bus mode)
        self.write_lock = threading.Lock()
        self.stopping = threading.Event()
        self.last_frame_at = None

    # -- the line --------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        with self.write_lock:
            self.port.write(data)
            self.port.flush()

    def take(self, data: bytes, polled_device=None) -> list:
        """Sort bytes from the line and spool their frames; returns the arrivals."""
        arrivals = self.intake.feed(data)
        for arrival in arrivals:
            if polled_device is not None and arrival.device != polled_device:
                self.counts["unpolled"] += 1  # spoke out of turn, or claims another device: not carried
                continue
            if arrival.kind == serial_link.IDLE:
                continue
            self.last_frame_at = time.time()
            outcome = self.spool.put(arrival)
            if outcome == "waiting":
                self.counts["duplicates_waiting"] += 1
            elif outcome == "full":
                self.counts["refused_full"] += 1
        return arrivals

    def _write_acks(self) -> None:
        while True:
            try:
                device, trailer = self.acks.get_nowait()
            except queue.Empty:
                return
            self._write(serial_link.packet(serial_link.ACK, device, trailer))

    def _read(self) -> bytes:
        # What the line has now, waiting at most the port's timeout for the first byte (a plain
        # read(4096) would wait for all 4096 or the timeout: every packet a timeout late).
        data = self.port.read(1)
        waiting = self.port.in_waiting if data else 0
        return data + self.port.read(waiting) if waiting else data

    def _poll_once(self, device: str) -> None:
        self._write(serial_link.packet(serial_link.POLL, device))
        deadline = time.monotonic() + self.answer_timeout_s
        while time.monotonic() < deadline and not self.stopping.is_set():
            data = self._read()
            if data and any(a.device == device for a in self.take(data, polled_device=device)):
                return
        self.counts["no_answer"] += 1

    def line_loop(self) -> None:
        while not self.stopping.is_set():
            if self.poll:
                for device in self.poll:
                    self._write_acks()
                    self._poll_once(device)
            else:
                data = self._read()
                if data:
                    self.take(data)

    # -- the broker ------------------------------------------------------------------------

    def broker_loop(self) -> None:
        while not self.stopping.is_set():
            arrival = self.spool.oldest(0.2)
            if arrival is None or not self.publisher.publish(arrival.topic, arrival.frame, self.stopping):
                continue
            self.spool.taken()
            self.counts["published"] += 1
            if arrival.intact:
                self.counts["acknowledged"] += 1
                if self.poll:
                    self.acks.put((arrival.device, arrival.frame[-4:]))
                else:
                    self._write(serial_link.packet(serial_link.ACK, arrival.device, arrival.frame[-4:]))

    def run(self) -> int:
        self.publisher.start()
        broker = threading.Thread(target=self.broker_loop, name="broker", daemon=True)
        broker.start()
        self.log("started", port=self.port.name, polled=len(self.poll), spooled=self.spool.depth)
        try:
            self.line_loop()
        finally:
            self.stopping.set()
            broker.join(15)
            self.publisher.stop()
            self.log("stopped", **self.figures())
        return 0

    def figures(self) -> dict:
        """Every count, for logs, /metrics and /health."""
        return {**{f"line_{k}": v for k, v in sorted(self.intake.counts.items())},
                **dict(sorted(self.counts.items())), "spooled": self.spool.depth, "spool_bytes": self.spool.bytes,
                "publish_failures": self.publisher.failures}
