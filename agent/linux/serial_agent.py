"""`linkseal agent run --serial PORT`: the Linux agent on a serial line to the relay.

The same agent as over MQTT (run.py: state directory, kill -9 safety, status messages) with
the firmware's own serial transport (firmware/device/serial_link.py), so a Linux box on an
RS-485 bus or a bedside gateway wired to a monitor speaks exactly what the boards speak: the
same packets, one frame at a time until the relay acknowledges it, sent again after a timeout
or when polled again. No last will: a silent device shows by its missing heartbeats. With
--rs485 the kernel drives the transceiver (pyserial's RS-485 mode), not a GPIO.
"""

import time

from agent.status import BIRTH, HEARTBEAT
from firmware.device import serial_link

from .run import LinuxAgent


class LinuxSerialTransport(serial_link.Transport):
    """The firmware's transport with the host's monotonic clock in place of a board's ticks."""

    def _ms(self):
        return int(time.monotonic() * 1000)

    def _since(self, start):
        return self._ms() - start


class SerialAgent(LinuxAgent):
    def __init__(self, config: dict, transport, state, log, max_rate: float = 50.0, heartbeat_s: float = 30.0):
        super().__init__(config, None, state, log, 1, max_rate, heartbeat_s)
        self.transport = transport
        self.birth_sent = False

    def _set_will(self) -> None:
        pass  # the relay holds none

    def link_up(self) -> bool:
        if not self.birth_sent:  # the birth goes first, as after every connect over MQTT
            self.birth_sent = self.send(self.status_topic, self.status(BIRTH))
            if self.birth_sent:
                self.log("connected", port=self.transport.uart.name)
        return self.birth_sent

    def send(self, topic: str, data: bytes) -> bool:
        return self.transport.publish(topic, data) is None

    def send_heartbeat(self) -> None:
        self.send(self.status_topic, self.status(HEARTBEAT))  # unacknowledged: the next one follows

    def idle(self) -> None:
        self.link_up()
        self.transport.keep_alive()  # polled with nothing to send: say so
        self.stopping.wait(0.01)

    def start_transport(self) -> None:
        self.transport.connect(self.status_topic, None)

    def stop_transport(self) -> None:
        self.transport.close()
