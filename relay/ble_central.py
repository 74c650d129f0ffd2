"""`linkseal relay ble`: the relay as a BLE central (bleak: BlueZ over D-Bus on Linux).

It scans for peripherals advertising the Nordic UART Service, connects to each (BlueZ
negotiates the MTU), subscribes to TX notifications and hands each connection to the relay as
a line (relay.run.Relay.add_line): the bytes of the notifications in, acks written to
RX in pieces of at most MTU - 3 bytes. A peripheral that disconnects is found again at the next
scan. Which parts ran against what: this module needs a Bluetooth controller, which no test
machine here has; the tests run the same Relay on the same lines against a stand-in for the air
(simulator/ble_air.py), and check only that this module refuses clearly without a controller.
"""

import asyncio
import threading

NUS = "6e400001-b5a3-f393-e0a9-e50e24dcca9e"
NUS_TX = "6e400003-b5a3-f393-e0a9-e50e24dcca9e"  # notify: device to relay
NUS_RX = "6e400002-b5a3-f393-e0a9-e50e24dcca9e"  # write: relay to device


class NoBluetooth(OSError):
    """No Bluetooth controller or BlueZ to talk to."""


class BlePort:
    """One connected peripheral as a line: what it notified, and writes to its RX."""

    timeout = 0.02

    def __init__(self, client, loop):
        self.client = client
        self.loop = loop
        self.name = f"ble:{client.address}"
        self.inbox = bytearray()
        self.cond = threading.Condition()

    def notified(self, _characteristic, data: bytearray) -> None:
        with self.cond:
            self.inbox += data
            self.cond.notify_all()

    @property
    def in_waiting(self) -> int:
        return len(self.inbox)

    def read(self, n: int) -> bytes:
        with self.cond:
            if not self.inbox:
                if not self.client.is_connected:
                    raise OSError("disconnected")
                self.cond.wait(self.timeout)
            data = bytes(self.inbox[:n])
            del self.inbox[:n]
        return data

    def write(self, data: bytes) -> int:
        step = max(20, self.client.mtu_size - 3)
        for i in range(0, len(data), step):
            done = asyncio.run_coroutine_threadsafe(
                self.client.write_gatt_char(NUS_RX, data[i:i + step], response=False), self.loop)
            done.result(5)
        return len(data)

    def flush(self) -> None:
        pass


class BleakCentral:
    def __init__(self, log, adapter: str | None = None, scan_s: float = 5.0):
        self.log = log
        self.adapter = adapter
        self.scan_s = scan_s

    def run(self, on_port, stopping: threading.Event) -> None:
        """Scan, connect and hand over lines until stopping is set (blocks)."""
        asyncio.run(self._main(on_port, stopping))

    async def _main(self, on_port, stopping):
        from bleak import BleakClient, BleakScanner
        from bleak.exc import BleakError

        loop = asyncio.get_running_loop()
        connected = {}
        kwargs = {"adapter": self.adapter} if self.adapter else {}
        while not stopping.is_set():
            try:
                found = await BleakScanner.discover(timeout=self.scan_s, service_uuids=[NUS], **kwargs)
            except (BleakError, OSError, EOFError) as exc:  # no controller, no BlueZ, no D-Bus
                raise NoBluetooth(f"relay ble: no Bluetooth controller reachable through BlueZ ({exc})") from None
            for device in found:
                if device.address in connected and connected[device.address].is_connected:
                    continue
                client = BleakClient(device, **kwargs)
                try:
                    await client.connect()
                    port = BlePort(client, loop)
                    await client.start_notify(NUS_TX, port.notified)
                except (BleakError, OSError, asyncio.TimeoutError) as exc:
                    self.log("ble_connect_failed", address=device.address, error=str(exc))
                    continue
                connected[device.address] = client
                self.log("ble_connected", address=device.address, mtu=client.mtu_size)
                on_port(port)
        for client in connected.values():
            await client.disconnect()
