"""The emulated modem on a serial line, its uplinks through the air and a network server to a
real MQTT broker: the I/O around simulator/lorawan/modem.py and network.py.

    line = ModemLine(NetworkServer(CHIRPSTACK, eui, Radio([Gateway("gw-1")]), publish=None),
                     broker_port=1883).start()
    VirtualDevice(flash, uarts={2: line.port})   # the board's machine.UART(2) is the modem

The serial line is a pseudo-terminal: the board opens its slave side (`line.port`), the modem
reads and writes the master side on a thread of its own. Answers are framed as RUI3 frames
them (CR LF before and after each line). The network server's integration publishes at QoS 1
for ChirpStack and QoS 0 for The Things Stack, as their MQTT servers do.
"""

import os
import select
import threading
import time
import tty

import paho.mqtt.client as mqtt

from hub.core.network_servers import TTN

from .modem import Rui3Modem


class ModemLine:
    def __init__(self, network_server, broker_port: int, broker_host: str = "127.0.0.1", **modem_options):
        self.server = network_server
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"network-server-{os.getpid()}-"
                                  f"{network_server.dev_eui}", protocol=mqtt.MQTTv311)
        self.qos = 0 if network_server.server == TTN else 1
        self.broker = (broker_host, broker_port)
        network_server.publish = self._publish
        self.modem = Rui3Modem(network_server.uplink, **modem_options)
        self.master = self.port = None
        self._slave = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="modem-line", daemon=True)
        self.published = 0

    def _publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=self.qos).wait_for_publish(30)
        self.published += 1

    def start(self) -> "ModemLine":
        self.client.connect(*self.broker)
        self.client.loop_start()
        self.master, slave = os.openpty()
        tty.setraw(slave)  # bytes as they are: no echo, no line discipline
        tty.setraw(self.master)
        self._slave = slave  # held open so the line stays up between the board's opens
        self.port = os.ttyname(slave)
        self._thread.start()
        return self

    def _write(self, lines) -> None:
        for line in lines:
            os.write(self.master, b"\r\n" + line.encode() + b"\r\n")

    def _serve(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            due = self.modem.next_due()
            wait = 0.2 if due is None else min(0.2, max(0.0, due - now))
            readable, _, _ = select.select([self.master], [], [], wait)
            now = time.monotonic()
            if readable:
                try:
                    data = os.read(self.master, 4096)
                except OSError:  # the board's side is closed for a moment (a reset)
                    data = b""
                self._write(self.modem.receive(data, now))
            self._write(self.modem.due(now))

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        for fd in (self.master, self._slave):
            if fd is not None:
                os.close(fd)
        self.master = self._slave = None
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> "ModemLine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
