# LoRaWAN for the agent: a modem on a UART, driven with RAKwireless RUI3 AT commands
# (RAK3172 and the other RUI3 modules; "RUI3 AT Command Manual", docs.rakwireless.com).
# The modem joins (OTAA) and holds the LoRaWAN session keys; the seal stays end to end on top.
#
# - A command ends in CR LF and is answered by one status line: OK, AT_ERROR, AT_PARAM_ERROR,
#   AT_BUSY_ERROR, AT_NO_NETWORK_JOINED, AT_DUTYCYCLE_RESTRICTED, ... A query (AT+XXX=?)
#   first answers AT+XXX=<value>. Events (+EVT:...) come on their own lines at any time.
# - AT+NJS=? says whether the modem has joined; AT+JOIN=1:0:10:8 joins, answered later by
#   +EVT:JOINED or +EVT:JOIN_FAILED_...; AT+DR=? is the data rate ADR chose.
# - AT+SEND=<fPort>:<hex> sends one unconfirmed uplink: OK, then +EVT:TX_DONE once it went
#   out and the receive windows closed. AT_BUSY_ERROR (a send or its receive windows still
#   under way) and AT_DUTYCYCLE_RESTRICTED (the region's duty cycle) mean "later": publish()
#   returns the reply and the frame stays queued.
# - A frame longer than the current data rate's payload is never sent, never cut: publish()
#   raises ValueError and the agent drops it, counted (status field too_large).
# Unconfirmed uplinks have no acknowledgement: what the air or the network server loses
# shows at the hub as loss, split by the frame counter (fCnt) into before and after sending.
import time
from binascii import hexlify

HELD = ("AT_BUSY_ERROR", "AT_DUTYCYCLE_RESTRICTED")


class Transport:
    has_will = False  # LoRaWAN has no last will: a silent device shows by its missing heartbeats

    def __init__(self, uart, limits, record_port=10, status_port=11, join_timeout_s=120, send_timeout_s=30):
        self.uart = uart
        self.limits = limits  # largest payload per data rate index (the device's region)
        self.record_port = record_port
        self.status_port = status_port
        self.join_timeout_ms = join_timeout_s * 1000
        self.send_timeout_ms = send_timeout_s * 1000
        self.joined = False
        self.dr = 0

    def _readline(self, deadline):
        # One line without its CR LF, or None at the deadline.
        line = b""
        while time.ticks_diff(deadline, time.ticks_ms()) > 0:
            part = self.uart.readline()
            if part:
                line += part
                if line.endswith(b"\n"):
                    line = line.strip()
                    if line:
                        return line.decode()
                    line = b""
        return None

    def _command(self, text, timeout_ms=3000):
        # (status, value) of one command: the value line of a query, else None.
        self.uart.write(text.encode() + b"\r\n")
        deadline = time.ticks_add(time.ticks_ms(), timeout_ms)
        value = None
        while True:
            line = self._readline(deadline)
            if line is None:
                raise OSError("modem: no answer to %s" % text[:12])
            if line == "OK" or line.startswith("AT_"):
                return line, value
            if line.startswith(text[:-1]):  # "AT+NJS=1" answers "AT+NJS=?"
                value = line[len(text) - 1:]

    def _event(self, names, timeout_ms):
        deadline = time.ticks_add(time.ticks_ms(), timeout_ms)
        while True:
            line = self._readline(deadline)
            if line is None:
                return None
            for name in names:  # MicroPython's startswith takes no tuple
                if line.startswith(name):
                    return line

    def connect(self, will_topic, will_payload):
        status = self._command("AT")[0]
        if status != "OK":
            raise OSError("modem: " + status)
        if self._command("AT+NJS=?")[1] != "1":
            status = self._command("AT+JOIN=1:0:10:8")[0]
            if status != "OK":
                raise OSError("modem: join " + status)
            event = self._event(("+EVT:JOINED", "+EVT:JOIN_FAILED"), self.join_timeout_ms)
            if event != "+EVT:JOINED":
                raise OSError("modem: %s" % (event or "no join answer"))
        self._read_dr()
        self.joined = True

    def _read_dr(self):
        value = self._command("AT+DR=?")[1]
        self.dr = int(value) if value and value.isdigit() else 0

    def connected(self):
        return self.joined

    def publish(self, topic, payload, qos=0):
        """None once the uplink went out; the modem's reply when it must wait (the frame stays
        queued); ValueError for a frame this data rate cannot carry; OSError when the modem
        lost its session or stopped answering."""
        limit = self.limits[self.dr] if self.dr < len(self.limits) else 0
        if len(payload) > limit:
            raise ValueError("frame of %d bytes over the %d of DR%d" % (len(payload), limit, self.dr))
        port = self.status_port if topic.endswith("/status") else self.record_port
        status = self._command("AT+SEND=%d:%s" % (port, hexlify(payload).decode()))[0]
        if status in HELD:
            return status
        if status != "OK":
            self.joined = status != "AT_NO_NETWORK_JOINED"
            raise OSError("modem: " + status)
        if self._event(("+EVT:TX_DONE",), self.send_timeout_ms) is None:
            raise OSError("modem: no TX_DONE")
        self._read_dr()  # ADR may have moved the data rate
        return None

    def keep_alive(self):
        pass  # nothing to keep: the modem holds the session

    def close(self):
        self.joined = False  # connect() asks the modem again; it keeps its session if it has one


def make(config, settings, feed):
    """The agent's transport from agent.json (app.make_transport): the modem on its UART."""
    from machine import UART

    modem = settings["lorawan"]
    uart = UART(modem["uart"], baudrate=modem["baud"], tx=modem["tx"], rx=modem["rx"], timeout=100)
    return Transport(uart, modem["limits"], modem["record_port"], modem["status_port"])
