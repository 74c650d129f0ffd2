"""`linkseal sim proxy`: an MQTT-aware TCP proxy that puts a link profile between real
devices and the broker.

It reads whole MQTT packets from each client and passes every packet through unchanged,
except PUBLISH packets from the client, which get a fate from the link model: dropped (a
QoS 1 client still gets its PUBACK, from the proxy, as when a broker or gateway loses a
record it accepted), payload bits flipped, duplicated, or delayed (jitter reorders them).
MQTT framing stays valid throughout. Outages close every connection and refuse new ones for
their duration. Every PUBLISH is written to a trace in simulator/trace.py's format.
"""

import asyncio
import json
import random
import signal
import time

from .faults import Fate, LinkModel, apply_fate
from .trace import TRACE_VERSION

PUBLISH, PUBACK = 3, 4


def _remaining_length(data: bytes):
    """(length, bytes used) of an MQTT remaining-length varint, or None if incomplete."""
    value, shift = 0, 0
    for used in range(1, 5):
        if used > len(data):
            return None
        byte = data[used - 1]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, used
        shift += 7
    raise ValueError("malformed MQTT remaining length")


def encode_length(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


async def read_packet(reader: asyncio.StreamReader) -> bytes | None:
    """One whole MQTT packet, or None at end of stream."""
    head = await reader.read(1)
    if not head:
        return None
    length_bytes = b""
    while True:
        parsed = _remaining_length(length_bytes)
        if parsed is not None:
            break
        byte = await reader.readexactly(1)
        length_bytes += byte
    length, _ = parsed
    body = await reader.readexactly(length)
    return head + length_bytes + body


def split_publish(packet: bytes):
    """(flags, topic, packet id or None, payload offset) of a PUBLISH packet."""
    flags = packet[0] & 0x0F
    _, used = _remaining_length(packet[1:])
    pos = 1 + used
    topic_len = int.from_bytes(packet[pos:pos + 2], "big")
    topic = packet[pos + 2:pos + 2 + topic_len].decode("utf-8", "replace")
    pos += 2 + topic_len
    packet_id = None
    if (flags >> 1) & 0x03:
        packet_id = int.from_bytes(packet[pos:pos + 2], "big")
        pos += 2
    return flags, topic, packet_id, pos


class FaultProxy:
    def __init__(self, model: LinkModel, upstream: tuple, seed: int, trace_path, outages=()):
        self.model = model
        self.upstream = upstream
        self.rng = random.Random(seed)
        self.outages = list(outages)  # (start, duration) in seconds since the proxy started
        self.start = time.monotonic()
        self.writers = set()
        self.trace = open(trace_path, "w")
        self.trace.write(json.dumps({"linkseal_trace": TRACE_VERSION, "source": "proxy", "seed": seed,
                                     "profile": model.name, "outages": self.outages}) + "\n")
        self.trace.flush()
        self.published = 0

    def _now(self) -> float:
        return time.monotonic() - self.start

    def _in_outage(self) -> bool:
        now = self._now()
        return any(start <= now < start + duration for start, duration in self.outages)

    async def handle(self, client_reader, client_writer):
        if self._in_outage():
            client_writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.close()
            return
        self.writers.update((client_writer, up_writer))
        downstream = asyncio.create_task(self._pump(up_reader, client_writer))
        try:
            await self._from_client(client_reader, client_writer, up_writer)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            downstream.cancel()
            for writer in (client_writer, up_writer):
                writer.close()
                self.writers.discard(writer)

    async def _pump(self, reader, writer):
        try:
            while (packet := await read_packet(reader)) is not None:
                writer.write(packet)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    async def _from_client(self, reader, client_writer, up_writer):
        while (packet := await read_packet(reader)) is not None:
            if packet[0] >> 4 != PUBLISH:
                up_writer.write(packet)
                await up_writer.drain()
                continue
            flags, topic, packet_id, payload_at = split_publish(packet)
            payload = packet[payload_at:]
            fate = self.model.fate(self.rng, self._now(), len(payload))
            self._record(topic, payload, fate)
            if fate.lost:
                if packet_id is not None:  # the client believes it delivered
                    client_writer.write(bytes((PUBACK << 4, 2)) + packet_id.to_bytes(2, "big"))
                    await client_writer.drain()
                continue
            sent = packet[:payload_at] + apply_fate(payload, fate)
            for delay in fate.delays:
                if delay <= 0:
                    up_writer.write(sent)
                else:
                    asyncio.get_running_loop().call_later(delay, self._late_write, up_writer, sent)
            await up_writer.drain()

    @staticmethod
    def _late_write(writer, packet):
        if not writer.is_closing():
            writer.write(packet)

    def _record(self, topic, payload, fate: Fate):
        import base64

        self.published += 1
        self.trace.write(json.dumps({"kind": "frame", "t": round(self._now(), 6), "link": self.model.name,
                                     "topic": topic, "frame": base64.b64encode(payload).decode(),
                                     "fate": fate.to_json()}) + "\n")
        self.trace.flush()

    async def watch_outages(self):
        """Cut every connection when an outage begins."""
        for start, _ in sorted(self.outages):
            await asyncio.sleep(max(0.0, start - self._now()))
            for writer in list(self.writers):
                writer.close()

    async def serve(self, host: str, port: int, ready=None, stop=None):
        """Serve until stop (an asyncio.Event) is set; without one, until SIGTERM or SIGINT."""
        server = await asyncio.start_server(self.handle, host, port)
        if stop is None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
        watcher = asyncio.create_task(self.watch_outages())
        bound = server.sockets[0].getsockname()
        if ready:
            ready(bound)
        async with server:
            await stop.wait()
        watcher.cancel()
        self.trace.close()
