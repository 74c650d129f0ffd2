# BLE for the agent: the Nordic UART Service (NUS) as the serial line to the relay, so the
# packets, acknowledgements and resends are serial_link.py's own (docs/relay.md, "BLE").
#
# - Service 6E400001-B5A3-F393-E0A9-E50E24DCCA9E: TX (...0003) notifies the relay, RX (...0002)
#   takes the relay's writes (acks). A packet goes out in notifications of at most MTU - 3
#   bytes (20 at the default ATT MTU of 23); the relay joins them and finds packets at their
#   0x00 delimiters, so a lost or repeated notification costs only the packet it was part of
#   (a damaged piece: never acknowledged, sent again).
# - MicroPython never starts the MTU exchange itself: the device asks for it on every connect.
# - It runs on MicroPython's `bluetooth` module (the IRQ API aioble is built on), driven from
#   the agent's loop without asyncio: no event loop or aioble objects on the heap (firmware heap
#   budget), and the same code runs on the virtual board, whose `bluetooth` is a stand-in.
import time

import bluetooth
import serial_link

# 6E40000n-B5A3-F393-E0A9-E50E24DCCA9E, little-endian as bluetooth.UUID and advertising take it.
_BASE = b"\x9e\xca\xdc\x24\x0e\xe5\xa9\xe0\x93\xf3\xa3\xb5"


def _uuid(n):
    return _BASE + bytes((n, 0, 0x40, 0x6E))


class NordicUart:
    """The NUS as a UART for serial_link.Transport: write() notifies, read() gives what was written."""

    def __init__(self):
        ble = bluetooth.BLE()
        ble.active(True)
        ble.config(mtu=247)  # the most this side takes; the exchange settles what both do
        ((self.tx, self.rx),) = ble.gatts_register_services(  # TX notifies; RX takes writes
            ((bluetooth.UUID(_uuid(1)), ((bluetooth.UUID(_uuid(3)), 0x10), (bluetooth.UUID(_uuid(2)), 0x0C))),))
        ble.gatts_set_buffer(self.rx, 256, True)  # writes append until read
        ble.irq(self._irq)
        self.ble = ble
        self.conn = None
        self.mtu = 23
        self.inbox = b""
        self._advertise()

    def _advertise(self):
        # Flags (general discoverable, no BR/EDR) and the NUS UUID: the relay looks for the
        # service, not for names; each packet names its device.
        self.ble.gap_advertise(200000, adv_data=b"\x02\x01\x06\x11\x07" + _uuid(1))

    def _irq(self, event, data):
        if event == 1:  # a central connected: ask for a larger MTU
            self.conn = data[0]
            self.mtu = 23
            self.ble.gattc_exchange_mtu(self.conn)
        elif event == 2:  # it disconnected: be found again
            self.conn = None
            self._advertise()
        elif event == 3 and data[1] == self.rx:  # the relay wrote (an ack)
            self.inbox += self.ble.gatts_read(self.rx)
        elif event == 21:  # MTU exchanged
            self.mtu = data[1]

    def write(self, data):
        if self.conn is not None:  # with nobody connected the frame simply gets no ack
            step = self.mtu - 3
            for i in range(0, len(data), step):
                self.ble.gatts_notify(self.conn, self.tx, data[i:i + step])
        return len(data)

    def read(self, n):
        data, self.inbox = self.inbox[:n], self.inbox[n:]
        if not data:
            time.sleep_ms(2)  # BLE events arrive as IRQs meanwhile
        return data


def make(config, settings, feed):
    """The agent's transport from agent.json (app.make_transport)."""
    ble = settings["ble"]
    return serial_link.Transport(NordicUart(), config["device_id"],
                                 ack_timeout_ms=ble.get("ack_timeout_ms", 1000))
