"""A serial line, or a multi-drop RS-485 bus, between devices and the relay: pseudo-terminals
joined by a thread, with faults injected on what the devices send, and the truth of them.

    with SerialBus(devices=1, faults=LineFaults(seed=3, ber=1e-4)) as line:
        VirtualDevice(..., uarts={2: line.device_ports[0]}); relay serial --port line.relay_port

Every byte one end writes reaches every other end (a bus: the relay hears each device, each
device hears the relay and the others), as RS-485 wiring does. Writes are instantaneous here,
so two devices cannot garble each other: the relay's count of packets out of turn is the check
that polling keeps the bus to one speaker. Faults apply to each packet a
device sends (everything up to and including its 0x00 delimiter): bit errors at a bit error
rate, dropped bytes, a lost delimiter. The truth is counted the way any receiver would see the
result: the damaged stream split at 0x00, each piece either one of the packets sent or damaged.
"""

import fcntl
import os
import random
import select
import threading
import tty
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class LineFaults:
    seed: int = 0
    ber: float = 0.0  # each bit of a packet flips with this probability
    drop: float = 0.0  # each byte of a packet is lost with this probability
    lost_delimiter: float = 0.0  # a packet's 0x00 is lost with this probability (it runs into the next)
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self):
        self.rng = random.Random(self.seed)

    def damage(self, packet: bytes) -> bytes:
        """The packet (delimiter included) as the line delivers it."""
        rng = self.rng
        out = bytearray(packet)
        if self.ber:
            for i in range(len(out)):
                for bit in range(8):
                    if rng.random() < self.ber:
                        out[i] ^= 1 << bit
        if self.drop:
            out = bytearray(b for b in out if rng.random() >= self.drop)
        if self.lost_delimiter and out.endswith(b"\x00") and rng.random() < self.lost_delimiter:
            del out[-1]
        return bytes(out)


class Truth:
    """What reached the relay, as a receiver splitting at 0x00 sees it: each piece byte for
    byte a packet that was sent (intact, a repeat included), or damaged."""

    def __init__(self):
        self.sent = set()  # packets sent (without delimiters), by content
        self.counts = Counter()  # pieces, intact, damaged, damaged_packets
        self._pending = b""

    def add(self, packet: bytes, delivered: bytes) -> None:
        """packet: as sent, with its delimiters; delivered: what the receiver got of it."""
        self.sent.add(packet.strip(b"\x00"))
        if delivered != packet:
            self.counts["damaged_packets"] += 1
        data = self._pending + delivered
        *pieces, self._pending = data.split(b"\x00")
        for piece in pieces:
            if not piece:
                continue
            self.counts["pieces"] += 1
            self.counts["intact" if piece in self.sent else "damaged"] += 1  # a repeat is intact too


def _raw_pty():
    master, slave = os.openpty()
    tty.setraw(slave)
    tty.setraw(master)
    # An end nobody reads fills up: its bytes are then lost (a receiver's overrun), the bus goes on.
    fcntl.fcntl(master, fcntl.F_SETFL, fcntl.fcntl(master, fcntl.F_GETFL) | os.O_NONBLOCK)
    return master, slave


class SerialBus:
    """ends: the relay's port, then one per device. faults: on what devices send (None: a clean line)."""

    def __init__(self, devices: int = 1, faults: LineFaults | None = None):
        self.faults = faults
        self.truth = Truth()
        self.ptys = [_raw_pty() for _ in range(devices + 1)]
        self.relay_port = os.ttyname(self.ptys[0][1])
        self.device_ports = [os.ttyname(slave) for _, slave in self.ptys[1:]]
        self._partial = {}  # device end -> bytes of a packet not yet ended
        self._stop = threading.Event()
        self._thread = None
        self._lock = threading.Lock()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, name="serial-bus", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        for master, slave in self.ptys:
            os.close(master)
            os.close(slave)

    def _send(self, origin: int, data: bytes) -> None:
        for end, (master, _) in enumerate(self.ptys):
            if end != origin and data:
                try:
                    os.write(master, data)
                except OSError:
                    pass  # that end's buffer is full (nobody reads it): the bytes are gone, as on a wire

    def _from_device(self, origin: int, data: bytes) -> bytes:
        if self.faults is None:
            return data
        out = b""
        data = self._partial.pop(origin, b"") + data
        *packets, rest = data.split(b"\x00")
        for packet in packets:
            packet += b"\x00"
            delivered = self.faults.damage(packet)
            with self._lock:
                self.truth.add(packet, delivered)
            out += delivered
        if rest:
            self._partial[origin] = rest
        return out

    def _run(self) -> None:
        masters = {master: end for end, (master, _) in enumerate(self.ptys)}
        while not self._stop.is_set():
            ready, _, _ = select.select(list(masters), [], [], 0.1)
            for master in ready:
                try:
                    data = os.read(master, 4096)
                except OSError:  # no one holds the other side open yet
                    continue
                end = masters[master]
                self._send(end, data if end == 0 else self._from_device(end, data))
