# bluetooth for the virtual board: a STAND-IN for the radio (no Bluetooth controller can run
# here). The parts of MicroPython's bluetooth.BLE the firmware's ble transport uses, with the
# air as lines of text on the board's UART 99, wired to simulator/ble_air.py on the host:
#
#   board -> air:  ADV <hex>   advertising (the payload)      N <hex>  a notification on TX
#                  MTU?        the device asks for the MTU exchange
#   air -> board:  C           a central connected (connection handle 1)
#                  M <n>       MTU exchanged: n          W <hex>  the central wrote RX
#                  D           the central disconnected
#
# IRQs are delivered as on a board: between the program's own steps, whenever it sleeps
# (machine._poll), with the same event numbers and data tuples as MicroPython's.
import binascii

import _vdev
import machine

FLAG_NOTIFY = 0x10
FLAG_WRITE = 0x08


class UUID:
    def __init__(self, value):
        self._value = bytes(value)

    def __bytes__(self):
        return self._value

    def __eq__(self, other):
        return isinstance(other, UUID) and other._value == self._value


class BLE:
    def __init__(self):
        self._air = machine.UART(99, timeout=0)
        self._line = b""
        self._irq = None
        self._buffers = {}  # handle -> bytes written by the central, not yet read
        self._mtu = 23
        machine._pollers.append(self._poll)

    def active(self, *state):
        return True

    def config(self, **settings):
        self._mtu = settings.get("mtu", self._mtu)

    def irq(self, handler):
        self._irq = handler

    def gatts_register_services(self, services):
        # Handles as a board numbers them: service, then each characteristic's value handle.
        handles, n = [], 1
        for _, characteristics in services:
            mine = []
            for _ in characteristics:
                n += 2
                mine.append(n)
            handles.append(tuple(mine))
        self._rx = handles[0][1]  # the NUS's writable characteristic
        return tuple(handles)

    def gatts_set_buffer(self, handle, size, append=False):
        self._buffers[handle] = b""

    def gatts_read(self, handle):
        data, self._buffers[handle] = self._buffers.get(handle, b""), b""
        return data

    def gap_advertise(self, interval_us, adv_data=None, resp_data=None):
        self._send(b"ADV " + binascii.hexlify(adv_data or b""))

    def gattc_exchange_mtu(self, conn):
        self._send(b"MTU?")

    def gatts_notify(self, conn, handle, data):
        if len(data) > self._mtu - 3:
            raise ValueError("notification longer than the MTU allows")
        self._send(b"N " + binascii.hexlify(data))

    def _send(self, line):
        self._air.write(line + b"\n")

    def _poll(self):
        data = _vdev.uart_read(99, 512, 0)  # not UART.read: that would run the pollers again
        if not data:
            return
        data = binascii.unhexlify(data)
        self._line += data
        while b"\n" in self._line:
            line, self._line = self._line.split(b"\n", 1)
            self._event(line)

    def _event(self, line):
        handler = self._irq or (lambda event, data: None)
        if line == b"C":
            handler(1, (1, 0, b"\x00" * 6))  # _IRQ_CENTRAL_CONNECT: (conn, addr type, addr)
        elif line == b"D":
            handler(2, (1, 0, b"\x00" * 6))  # _IRQ_CENTRAL_DISCONNECT
        elif line.startswith(b"M "):
            self._mtu = min(self._mtu, int(line[2:]))
            handler(21, (1, self._mtu))  # _IRQ_MTU_EXCHANGED: (conn, mtu)
        elif line.startswith(b"W "):
            self._buffers[self._rx] = self._buffers.get(self._rx, b"") + binascii.unhexlify(line[2:])
            handler(3, (1, self._rx))  # _IRQ_GATTS_WRITE: (conn, value handle)
