"""The air between a virtual board's BLE and the relay: a STAND-IN (no Bluetooth controller can
run in a container), at the edge only. The board's side is simulator/board/bluetooth.py on its
UART 99; this is the other end of that line and plays the relay's central:

- it connects when the board advertises, and answers the board's MTU exchange with its own MTU
  (`central_mtu`: 23 keeps the default, 20-byte notifications);
- what the board notifies on the NUS TX characteristic reaches the relay's line, each
  notification perhaps lost or repeated (`NotificationFaults`), with the truth counted as a
  receiver splitting at 0x00 sees it (simulator.serial_line.Truth);
- what the relay writes is cut into writes of at most MTU - 3 bytes on the NUS RX characteristic.

`BleAir.port()` is the relay's line for this peripheral (relay.run.Relay.add_line):
read, write, flush, in_waiting, name, as a pyserial port has them; reads raise OSError once the
board has gone (it stopped advertising and the link dropped).
"""

import binascii
import os
import random
import threading
import tty
from dataclasses import dataclass, field

from .serial_line import Truth


@dataclass
class NotificationFaults:
    seed: int = 0
    lost: float = 0.0  # each notification lost with this probability
    repeated: float = 0.0  # each delivered twice with this probability
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self):
        self.rng = random.Random(self.seed)

    def deliver(self, chunk: bytes) -> bytes:
        if self.rng.random() < self.lost:
            return b""
        return chunk * 2 if self.rng.random() < self.repeated else chunk


class BleAir:
    def __init__(self, central_mtu: int = 247, faults: NotificationFaults | None = None):
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        self.board_port = os.ttyname(self.slave)  # VirtualDevice(uarts={99: board_port})
        self.central_mtu = central_mtu
        self.faults = faults
        self.truth = Truth()
        self.mtu = 23  # until the exchange
        self.notifications = 0
        self.connected = threading.Event()
        self._inbox = bytearray()
        self._sent, self._delivered = b"", b""  # the packet under way, as sent and as delivered
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ble-air", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        os.close(self.master)
        os.close(self.slave)

    def _send(self, line: bytes) -> None:
        os.write(self.master, line + b"\n")

    def _run(self) -> None:
        import select

        pending = b""
        while not self._stop.is_set():
            if not select.select([self.master], [], [], 0.1)[0]:
                continue
            try:
                pending += os.read(self.master, 4096)
            except OSError:
                continue
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self._board_said(line)

    def _board_said(self, line: bytes) -> None:
        if line.startswith(b"ADV ") and not self.connected.is_set():
            self._send(b"C")
            self.connected.set()
        elif line == b"MTU?":
            self.mtu = min(self.central_mtu, 247)
            self._send(b"M %d" % self.mtu)
        elif line.startswith(b"N "):
            chunk = binascii.unhexlify(line[2:])
            assert len(chunk) <= self.mtu - 3, "a notification longer than the MTU allows"
            self.notifications += 1
            delivered = chunk if self.faults is None else self.faults.deliver(chunk)
            self._sent += chunk
            self._delivered += delivered
            if chunk.endswith(b"\x00"):  # the end of a packet: what the receiver gets of it
                self.truth.add(self._sent, self._delivered)
                self._sent, self._delivered = b"", b""
            with self._cond:
                self._inbox += delivered
                self._cond.notify_all()

    def port(self) -> "NusPort":
        return NusPort(self)


class NusPort:
    """The relay's line to one peripheral: bytes notified in, writes out in MTU - 3 pieces."""

    timeout = 0.02

    def __init__(self, air: BleAir):
        self.air = air
        self.name = "ble-stand-in"

    @property
    def in_waiting(self) -> int:
        return len(self.air._inbox)

    def read(self, n: int) -> bytes:
        air = self.air
        with air._cond:
            if not air._inbox:
                air._cond.wait(self.timeout)
            if air._stop.is_set():
                raise OSError("the peripheral disconnected")
            data = bytes(air._inbox[:n])
            del air._inbox[:n]
        return data

    def write(self, data: bytes) -> int:
        step = self.air.mtu - 3
        for i in range(0, len(data), step):
            self.air._send(b"W " + binascii.hexlify(data[i:i + step]))
        return len(data)

    def flush(self) -> None:
        pass
