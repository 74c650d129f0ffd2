"""The relay's spool: frames received and not yet taken by the broker, on disk, oldest first.

It survives the relay's restart (kill -9 included) and broker outages, and it is bounded: when
full, a new frame is refused and counted, never acknowledged, so its device keeps it and sends
it again. Devices send one frame at a time until acknowledged, so a repeat is always of the
newest frame its device sent: it is not queued again while that one waits (the spool remembers
one frame per device, not one per frame). Damaged copies each wait, as each is a measurement of
the link that the hub should count.
"""

import struct
import threading
from pathlib import Path

from firmware.device.store import Store

from .intake import Arrival

_HEAD = struct.Struct(">BB")  # kind, intact


def encode(arrival: Arrival) -> bytes:
    device = arrival.device.encode()
    return _HEAD.pack(arrival.kind, arrival.intact) + bytes((len(device),)) + device + arrival.frame


def decode(entry: bytes) -> Arrival:
    kind, intact = _HEAD.unpack_from(entry)
    end = 3 + entry[2]
    return Arrival(kind, entry[3:end].decode(), entry[end:], bool(intact))


class Spool:
    def __init__(self, directory: Path, max_bytes: int = 16 * 1024 * 1024):
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.store = Store(str(directory / "spool"), ram_frames=0, file_bytes=max_bytes)
        self.max_bytes = max_bytes
        self.changed = threading.Condition()
        self.bytes = self.depth = 0
        self.newest = {}  # device -> CRC trailer of its newest intact frame still waiting
        for entry in self.store.frames():
            self.bytes += 2 + len(entry)
            self.depth += 1
            arrival = decode(entry)
            if arrival.intact:
                self.newest[arrival.device] = arrival.frame[-4:]
        self.refused = 0  # frames refused because the spool was full

    def put(self, arrival: Arrival) -> str:
        """"queued", "waiting" (the same intact frame already is) or "full"."""
        entry = encode(arrival)
        with self.changed:
            if arrival.intact and self.newest.get(arrival.device) == arrival.frame[-4:]:
                return "waiting"
            if self.bytes + 2 + len(entry) > self.max_bytes:
                self.refused += 1
                return "full"
            self.store.put(entry)
            self.bytes += 2 + len(entry)
            self.depth += 1
            if arrival.intact:
                self.newest[arrival.device] = arrival.frame[-4:]
            self.changed.notify_all()
            return "queued"

    def oldest(self, timeout: float):
        """The oldest waiting frame, waiting up to timeout seconds for one; None if none came."""
        with self.changed:
            if not self.depth:
                self.changed.wait(timeout)
            entry = self.store.peek()
        return None if entry is None else decode(entry)

    def taken(self) -> None:
        """The broker has the oldest frame: forget it."""
        with self.changed:
            entry = self.store.peek()
            if entry is None:
                return
            self.store.pop()
            self.bytes -= 2 + len(entry)
            self.depth -= 1
            taken = decode(entry)
            if taken.intact and self.newest.get(taken.device) == taken.frame[-4:]:
                del self.newest[taken.device]
