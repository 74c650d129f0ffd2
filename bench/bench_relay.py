"""The relay on a serial line (docs/relay.md), measured through a pseudo-terminal into a real
Mosquitto:

- relay_serial_frames_per_s: a device that behaves as the firmware does (one frame at a time,
  the next only once the relay has acknowledged it after the broker's PUBACK), against the
  line's theoretical frame rate at 115,200 baud 8N1 (11,520 bytes/s over the bytes one packet
  takes on the wire; the ack's bytes not even counted). A pseudo-terminal has no baud rate of
  its own, so the figure says whether the relay keeps up with a line at full speed (>= 0.9).
- relay_rss_bytes: the relay's resident memory while 100,000 frames from 100 devices pass
  through it (200 unacknowledged at a time), sampled every 20,000 once all of them are
  published: it must stay flat (spool on disk, one packet and one frame per device in memory).
"""

import json
import os
import select
import tempfile
import time
import tty
from pathlib import Path

from agent.linux.serial_agent import LinuxSerialTransport
from agent.sealer import sealer_for
from firmware.device import serial_link
from hub.keys.keyfile import KeyFile
from tools.services import Mosquitto, RelayProcess

BAUD = 115200
RECORD = b'{"flow_ml_h": 125.0, "state": "run"}'


class MasterEnd:
    """The device's end of the pty (its master side), as a UART: read(n) waits up to 20 ms."""

    def __init__(self, fd):
        self.fd = fd
        self.name = "pty"

    def write(self, data):
        return os.write(self.fd, data)

    def flush(self):
        pass

    def read(self, n):
        ready, _, _ = select.select([self.fd], [], [], 0.02)
        return os.read(self.fd, n) if ready else b""


def rss_bytes(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def stop_and_wait(relay_fd, sealer, frames: int) -> float:
    transport = LinuxSerialTransport(MasterEnd(relay_fd), sealer.device_id, baud=BAUD, ack_timeout_ms=2000)
    topic = f"linkseal/v1/{sealer.device_id}/rec"
    sealed = [sealer.seal(RECORD) for _ in range(frames)]
    start = time.perf_counter()
    for frame in sealed:
        while transport.publish(topic, frame) is not None:
            pass
    return time.perf_counter() - start


def streamed(fd, sealers, frames: int, relay, window: int = 200) -> list:
    """Frames from many devices with up to `window` unacknowledged at a time (as 200 devices
    on a line would have): RSS every 20,000 frames, each sample once they are all published."""
    samples = []
    acks = serial_link.Splitter(256)
    unacked = 0
    for n in range(frames):
        sealer = sealers[n % len(sealers)]
        os.write(fd, serial_link.packet(serial_link.RECORD, sealer.device_id, sealer.seal(RECORD)))
        unacked += 1
        while select.select([fd], [], [], 0 if unacked < window else 5)[0] or unacked >= window:
            got = len(acks.feed(os.read(fd, 65536)))
            if not got and unacked >= window:
                raise RuntimeError("the relay stopped acknowledging")
            unacked -= got
        if (n + 1) % 20000 == 0:
            while unacked:
                if not select.select([fd], [], [], 5)[0]:
                    raise RuntimeError("the relay stopped acknowledging")
                unacked -= len(acks.feed(os.read(fd, 65536)))
            samples.append(rss_bytes(relay.process.pid))
    return samples


def main():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        keyfile = KeyFile.create(tmp / "hub.keys")
        sealers = [sealer_for(keyfile.provision(f"plc-{i:03d}", "rs485", save=False), 1) for i in range(100)]
        (tmp / "broker").mkdir()
        broker = Mosquitto(tmp / "broker").start_on_a_free_port()
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        relay = RelayProcess(broker, os.ttyname(slave), tmp / "spool", tmp / "relay.log")
        try:
            relay.start()
            stop_and_wait(master, sealers[0], 200)  # warm up
            frames = 3000
            seconds = stop_and_wait(master, sealers[0], frames)
            samples = streamed(master, sealers, 100_000, relay)
        finally:
            counts = relay.stop()
            broker.stop()
            os.close(master)
            os.close(slave)
    wire = len(serial_link.packet(serial_link.RECORD, sealers[0].device_id, sealers[0].seal(RECORD)))
    line_rate = BAUD / 10 / wire
    rate = frames / seconds
    print(json.dumps({"figure": "relay_serial_frames_per_s", "value": round(rate, 1),
                      "line_frames_per_s": round(line_rate, 1), "ratio": round(rate / line_rate, 2),
                      "target": ">= 0.9 of the line's rate", "packet_bytes_on_wire": wire,
                      "note": "stop and wait: each frame acknowledged after the broker's PUBACK before the next; "
                              "115200 baud 8N1, a 36-byte record"}))
    print(json.dumps({"figure": "relay_rss_bytes", "value": samples[-1], "samples_every_20000_frames": samples,
                      "growth_bytes": samples[-1] - samples[0], "target": "flat",
                      "frames_published": counts.get("published"), "line_overrun": counts.get("line_overrun", 0),
                      "note": "100,000 frames from 100 devices, 200 unacknowledged at a time"}))


if __name__ == "__main__":
    main()
