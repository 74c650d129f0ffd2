"""The serial line's packets (firmware/device/serial_link.py): the device's small COBS encoder
against the PyPI `cobs` the relay uses, on CPython and on real MicroPython; the header check
that keeps a damaged address from naming another device; resynchronisation at delimiters."""

import json
import random
import time

import pytest
from cobs import cobs
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.device import serial_link as sl
from firmware.host.board_files import device_dir
from relay.intake import parse
from tools.micropython import run_micropython


@given(st.binary(max_size=700))
@settings(max_examples=400)
def test_the_device_encoder_is_cobs(data):
    encoded = sl.cobs_encode(data)
    assert encoded == cobs.encode(data)
    assert b"\x00" not in encoded
    assert cobs.decode(encoded) == data


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x00", b"\x01" * 253, b"\x01" * 254, b"\x01" * 255,
                                  b"\x01" * 254 + b"\x00", b"\x00" + b"\x02" * 508])
def test_block_boundaries(data):
    assert sl.cobs_encode(data) == cobs.encode(data)


def test_a_packet_parses_back_and_a_damaged_header_never_names_another_device():
    frame = bytes(range(1, 60))
    wire = sl.packet(sl.RECORD, "plc-7", frame)
    assert wire.startswith(b"\x00") and wire.endswith(b"\x00") and wire.count(0) == 2
    assert parse(cobs.decode(wire[1:-1])) == (sl.RECORD, "plc-7", frame)
    decoded = cobs.decode(wire[1:-1])
    head_len = 2 + len("plc-7") + 4
    for at in range(head_len):  # every single-bit error in the header is caught
        for bit in range(8):
            damaged = bytearray(decoded)
            damaged[at] ^= 1 << bit
            with pytest.raises(ValueError):
                parse(bytes(damaged))
    for short in (b"", b"\x01", b"\x01\x05plc"):
        with pytest.raises(ValueError):
            parse(short)


def test_the_splitter_resynchronises_and_stays_bounded():
    packets = [sl.packet(sl.RECORD, f"d{i}", bytes([i + 1]) * 40) for i in range(5)]
    stream = b"".join(packets)
    splitter = sl.Splitter(limit=100)
    pieces = []
    for i in range(0, len(stream), 7):  # any chunking gives the same packets
        pieces += splitter.feed(stream[i:i + 7])
    assert pieces == [p[1:-1] for p in packets]
    # A lost delimiter costs nothing: the next packet's leading one ends the packet before.
    assert sl.Splitter(limit=200).feed(packets[0][:-1] + packets[1]) == [p[1:-1] for p in packets[:2]]
    # A damaged byte costs only its own packet: the ones around it arrive whole.
    damaged = packets[1][:5] + b"\x00" + packets[1][6:]
    got = sl.Splitter(limit=200).feed(packets[0] + damaged + packets[2])
    assert got[0] == packets[0][1:-1] and got[-1] == packets[2][1:-1] and packets[1][1:-1] not in got
    # A megabyte without a delimiter: dropped up to the next one, counted, never held.
    splitter = sl.Splitter(limit=100)
    noise = bytes(random.Random(1).randrange(1, 256) for _ in range(1 << 20))
    assert splitter.feed(noise) == [] and len(splitter.buf) <= 100
    assert splitter.feed(b"\x00" + packets[3])[-1:] == [packets[3][1:-1]]
    assert splitter.overruns >= 1 << 20 // 101


class Line:
    """The device's end of a serial line, for the transport's rules (what it writes, what it reads)."""

    def __init__(self, replies):
        self.replies = list(replies)  # what the relay says after each write
        self.written = []
        self.inbox = b""

    def write(self, data):
        self.written.append(bytes(data))
        if self.replies:
            self.inbox += self.replies.pop(0)
        return len(data)

    def read(self, n):
        data, self.inbox = self.inbox[:n], self.inbox[n:]
        return data or None


class Pin:
    def __init__(self):
        self.levels = []

    def value(self, level):
        self.levels.append(level)


class Uart(Line):
    def flush(self):
        self.written.append(b"flush")


class BoardTime:
    """A board's time module, as the transport uses it, on the host's clock."""

    @staticmethod
    def ticks_ms():
        return int(time.monotonic() * 1000)

    @staticmethod
    def ticks_diff(a, b):
        return a - b

    @staticmethod
    def sleep_us(us):
        time.sleep(us / 1e6)


@pytest.fixture(autouse=True)
def board_time(monkeypatch):
    monkeypatch.setattr(sl, "time", BoardTime)


def test_the_transport_drives_de_and_waits_for_its_own_ack():
    frame = bytes(range(1, 30)) + b"\xaa\xbb\xcc\xdd"
    ack = sl.packet(sl.ACK, "plc-7", frame[-4:])
    other = sl.packet(sl.ACK, "plc-8", frame[-4:])
    wrong = sl.packet(sl.ACK, "plc-7", b"\x00\x00\x00\x00")
    line, de = Uart([other + wrong + ack]), Pin()
    transport = sl.Transport(line, "plc-7", de, 115200, ack_timeout_ms=50)
    assert transport.publish("linkseal/v1/plc-7/rec", frame) is None
    assert parse(cobs.decode(line.written[0][1:-1])) == (sl.RECORD, "plc-7", frame)
    assert de.levels == [0, 1, 0]  # listening, driving around the write, listening again
    assert line.written[1] == b"flush"  # the last byte left before DE dropped
    line = Line([b""])
    transport = sl.Transport(line, "plc-7", ack_timeout_ms=20)
    assert transport.publish("linkseal/v1/plc-7/status", frame) == "no ack"
    assert parse(cobs.decode(line.written[0][1:-1]))[0] == sl.STATUS


def test_polled_the_device_speaks_only_when_polled_and_says_idle():
    frame = bytes(range(1, 30)) + b"\x01\x02\x03\x04"
    line = Line([sl.packet(sl.ACK, "plc-7", frame[-4:])])
    line.inbox = sl.packet(sl.POLL, "plc-8") + sl.packet(sl.POLL, "plc-7")
    transport = sl.Transport(line, "plc-7", polled=True, ack_timeout_ms=50, poll_wait_ms=50)
    assert transport.publish("linkseal/v1/plc-7/rec", frame) is None
    assert len(line.written) == 1
    assert transport.publish("linkseal/v1/plc-7/rec", frame) == "no ack"  # never polled: never spoke
    assert len(line.written) == 1
    line.inbox = sl.packet(sl.POLL, "plc-7")
    transport.keep_alive()
    assert parse(cobs.decode(line.written[-1][1:-1]))[:2] == (sl.IDLE, "plc-7")


def test_the_codec_runs_on_micropython_as_on_cpython():
    rng = random.Random(7)
    cases = [bytes(rng.randrange(0, 4) for _ in range(n)) for n in (0, 1, 253, 254, 255, 600)]
    source = (device_dir() / "serial_link.py").read_text()
    code = ("import json, serial_link as sl\n"
            f"cases = [bytes(c) for c in {json.dumps([list(c) for c in cases])}]\n"
            "out = [list(sl.cobs_encode(c)) for c in cases]\n"
            "w = sl.packet(sl.ACK, 'plc-7', b'\\x01\\x00\\x02')\n"
            "out.append(list(sl.Splitter(64).feed(w + w)[1]))\n"
            "print(json.dumps(out))\n")
    got = json.loads(run_micropython(code, files={"/lib/serial_link.py": source}).strip().splitlines()[-1])
    assert got[:-1] == [list(cobs.encode(c)) for c in cases]
    assert parse(cobs.decode(bytes(got[-1]))) == (sl.ACK, "plc-7", b"\x01\x00\x02")


class BusyBus(Line):
    """A bus that never falls silent: every read brings another device's packet."""

    def read(self, n):
        return sl.packet(sl.RECORD, "plc-8", b"x" * 40)


def test_a_busy_bus_never_holds_the_device_past_its_timeouts():
    transport = sl.Transport(BusyBus([]), "plc-7", polled=True, ack_timeout_ms=30, poll_wait_ms=30)
    assert transport.publish("linkseal/v1/plc-7/rec", b"y" * 40) == "no ack"  # never polled, never spoke
    transport.keep_alive()  # returns: one read's worth of packets, then back to the agent's loop
    assert transport.uart.written == []
