# The serial line between a device and the relay on a gateway (docs/relay.md, "On the wire"):
# the firmware's uart transport, the Linux agent's --serial and the relay all speak it.
#
# Packets travel in COBS (Cheshire and Baker, 1999) and each ends with 0x00, the one byte
# COBS never produces: a receiver that lost its place resynchronises at the next 0x00, so a
# damaged byte or delimiter costs at most the packets it touched. Decoded, a packet is
#
#   byte 0     kind: RECORD, STATUS (device -> relay: the body is a sealed frame of the full
#              form, its CRC-32 included), IDLE (device -> relay: polled, nothing to send),
#              POLL, ACK (relay -> device: an ack's body is the CRC-32 trailer of the frame
#              the broker now holds)
#   byte 1     length of the device id, then the device id (UTF-8)
#   4 bytes    CRC-32 of the bytes above: a damaged address is never read as another device,
#              so a frame damaged on the line is published under its own device (and counted
#              corrupt on its link by the hub), never under a stranger's (a forgery)
#   ...        body
#
# The relay holds no key: it acknowledges a frame once the broker has it, and the device keeps
# every frame until then (at least once, as over MQTT; the hub's window drops the repeats).
# This module encodes (a device needs nothing else: it recognises a poll or an ack of its own
# by comparing what came with what it would be); relay/intake.py decodes.
import binascii
import struct
import time

RECORD = 1
STATUS = 2
IDLE = 3
POLL = 17
ACK = 18

def cobs_encode(data):
    # Each block: a code byte (1 + the non-zero bytes that follow), then those bytes; a code
    # under 0xFF stands for a zero after its block. 254 non-zero bytes fill a block (0xFF); a
    # full block at the very end needs no empty one after it.
    out = bytearray(1)
    at = 0
    code = 1
    last = len(data) - 1
    for i in range(len(data)):
        b = data[i]
        if b:
            out.append(b)
            code += 1
        if not b or (code == 0xFF and i < last):
            out[at] = code
            at = len(out)
            out.append(0)
            code = 1
    out[at] = code
    return bytes(out)


def packet(kind, device_id, body=b""):
    """One packet on the wire: COBS-encoded between two delimiters (the leading one ends
    whatever came before, so even a lost delimiter costs no other packet)."""
    raw = device_id.encode()
    head = bytes((kind, len(raw))) + raw
    return b"\x00" + cobs_encode(head + struct.pack(">I", binascii.crc32(head)) + body) + b"\x00"


class Splitter:
    """Bytes from the line in, COBS-encoded packets out (delimiters removed). Bytes beyond
    `limit` without a delimiter are dropped and counted (what follows them up to the next
    delimiter arrives as one damaged piece): memory stays bounded whatever arrives."""

    def __init__(self, limit):
        self.limit = limit
        self.buf = b""
        self.overruns = 0

    def feed(self, data):
        out = []
        pos = 0
        while True:
            end = data.find(b"\x00", pos)
            if end < 0:
                self.buf += data[pos:]
                if len(self.buf) > self.limit:
                    self.buf = b""
                    self.overruns += 1
                return out
            piece = self.buf + data[pos:end]
            self.buf = b""
            pos = end + 1
            if len(piece) > self.limit:
                self.overruns += 1
            elif piece:
                out.append(piece)


class Transport:
    """The agent's transport over a serial line (machine.UART, or pyserial on Linux).

    RS-485 is half duplex and MicroPython's UART has no RS-485 mode: with a `de` pin the
    transceiver's driver is enabled around each write (write, flush, one character time, then
    released: on rp2 flush() returns before the last byte leaves). On a multi-drop bus
    (`polled`) the device speaks only when the relay polls its id, so no two talk at once.
    """

    has_will = False  # the relay holds no will: a silent device shows by its missing heartbeats

    def __init__(self, uart, device_id, de=None, baud=115200, polled=False, ack_timeout_ms=1000,
                 poll_wait_ms=2000, limit=600):
        self.uart = uart
        self.device_id = device_id
        self.de = de
        self.char_us = 10000000 // baud + 1  # start, 8 data and stop bits
        self.polled = polled
        self.ack_timeout_ms = ack_timeout_ms
        self.poll_wait_ms = poll_wait_ms
        self.splitter = Splitter(limit)
        self.pending = []  # packets read and not yet looked at
        self.poll = packet(POLL, device_id)[1:-1]
        self.up = False
        if de is not None:
            de.value(0)  # listen: the bus is free for others

    def _write(self, data):
        de = self.de
        if de is not None:
            de.value(1)
        self.uart.write(data)
        if de is not None:
            self.uart.flush()
            time.sleep_us(self.char_us)
            de.value(0)

    # The clock: ticks on a board; the Linux agent's subclass uses its own.
    def _ms(self):
        return time.ticks_ms()

    def _since(self, start):
        return time.ticks_diff(time.ticks_ms(), start)

    def _next(self, start, timeout_ms):
        # The next packet on the line, still encoded (the device compares what it expects, a
        # poll or an ack of its own, with what came), or None once timeout_ms went by with
        # nothing more.
        while True:
            if self.pending:
                return self.pending.pop(0)
            data = self.uart.read(256)
            if data:
                self.pending = self.splitter.feed(data)
            if not self.pending and self._since(start) >= timeout_ms:
                return None

    def connect(self, will_topic, will_payload):
        self.up = True  # nothing to open: the relay learns the device from its first packet

    def connected(self):
        return self.up

    def publish(self, topic, payload, qos=1):
        """None once the relay acknowledged the frame (the broker has it); else why not, and
        the frame stays queued for the next try (sent again: the hub's window drops repeats)."""
        wire = packet(STATUS if topic.endswith("/status") else RECORD, self.device_id, payload)
        ack = packet(ACK, self.device_id, payload[-4:])[1:-1]
        if not self.polled:
            self._write(wire)
        start = self._ms()
        wait = self.poll_wait_ms if self.polled else self.ack_timeout_ms
        while True:
            got = self._next(start, wait)
            if got == ack:  # perhaps of a copy sent before
                return None
            if got == self.poll and self.poll not in self.pending:  # our turn (the latest poll, not a stale one)
                self._write(wire)
                start = self._ms()
                wait = self.ack_timeout_ms
            elif got is None or self._since(start) >= wait:  # others' packets never hold it longer
                return "no ack"

    def keep_alive(self):
        # Polled with nothing to send: say so, so the relay moves on at once. One read's worth
        # of packets, so a busy bus cannot keep the loop here.
        got = self._next(self._ms(), 0)
        while got is not None:
            if got == self.poll and self.poll not in self.pending:
                self._write(packet(IDLE, self.device_id))
            got = self.pending.pop(0) if self.pending else None

    def close(self):
        self.up = False

