"""What arrives on a serial line, sorted (sans-I/O: bytes in, arrivals and counts out).

Each packet between two delimiters is decoded (PyPI `cobs`) and its header checked
(firmware/device/serial_link.py, the one definition of the packet). A packet whose header is
whole names its device truly, so its frame is published even when the frame's own CRC fails:
the hub counts it `corrupt` on the device's link, and the device, never acknowledged, sends it
again. What cannot be attributed (a piece that is not COBS, a damaged header) is only counted:
published under a guessed name it would read as a forgery. Nothing here holds more than one
packet's worth of bytes, whatever the line carries.
"""

import binascii
import struct
from collections import Counter
from dataclasses import dataclass

from cobs import cobs

from agent.frame import MAX_OVERHEAD
from agent.sealer import MAX_DEVICE_ID_LEN, check_device_id, status_topic_for, topic_for
from firmware.device import serial_link

# The longest packet: header with the longest id, then the longest frame a serial link carries.
MAX_FRAME = 1024
MAX_PACKET = 2 + MAX_DEVICE_ID_LEN + 4 + MAX_FRAME + MAX_OVERHEAD
LIMIT = MAX_PACKET + MAX_PACKET // 254 + 2  # COBS adds a byte per 254


@dataclass(frozen=True)
class Arrival:
    kind: int  # serial_link.RECORD, STATUS or IDLE
    device: str
    frame: bytes
    intact: bool  # the frame's CRC-32 holds: acknowledge it once the broker has it

    @property
    def topic(self) -> str:
        return (status_topic_for if self.kind == serial_link.STATUS else topic_for)(self.device)


def parse(data: bytes) -> tuple:
    """(kind, device id, body) of a decoded packet (firmware/device/serial_link.py has the
    layout and the encoder); ValueError when its header is damaged."""
    end = 2 + data[1] if len(data) > 1 else 2
    if len(data) < end + 4 or binascii.crc32(data[:end]) != struct.unpack(">I", data[end:end + 4])[0]:
        raise ValueError("packet header damaged")
    return data[0], data[2:end].decode(), data[end + 4:]


def crc_intact(frame: bytes) -> bool:
    return len(frame) > 4 and binascii.crc32(frame[:-4]) == struct.unpack(">I", frame[-4:])[0]


class Intake:
    """Bytes from one serial line in, Arrivals out; `counts` says what else came."""

    def __init__(self):
        self.splitter = serial_link.Splitter(LIMIT)
        self.counts = Counter()

    def feed(self, data: bytes) -> list:
        arrivals = []
        for piece in self.splitter.feed(data):
            arrival = self._sort(piece)
            if arrival is not None:
                arrivals.append(arrival)
        self.counts["overrun"] = self.splitter.overruns
        return arrivals

    def _sort(self, piece: bytes):
        self.counts["pieces"] += 1
        try:
            kind, device, body = parse(cobs.decode(piece))
        except cobs.DecodeError:
            self.counts["not_cobs"] += 1
            return None
        except ValueError:  # a damaged header, or an id that is not UTF-8
            self.counts["header_damaged"] += 1
            return None
        try:
            check_device_id(device)  # one topic level, no wildcards: never a topic of someone else's
        except ValueError:
            self.counts["bad_device_id"] += 1
            return None
        if kind == serial_link.IDLE:
            self.counts["idle"] += 1
            return Arrival(kind, device, b"", True)
        if kind not in (serial_link.RECORD, serial_link.STATUS):
            self.counts["not_for_relay"] += 1  # a poll or an ack: the relay's own, echoed or misplaced
            return None
        intact = crc_intact(body)
        self.counts["frames" if intact else "frames_damaged"] += 1
        return Arrival(kind, device, body, intact)
