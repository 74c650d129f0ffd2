"""A LoRaWAN modem that speaks RAKwireless RUI3 AT commands (RAK3172), emulated: sans-I/O.

Bytes from the board's UART in (`receive`), lines for the board out; uplinks it sends go to
`on_uplink`. Time is given, never read, so a test or a replay drives it exactly.

What it does, as the RUI3 AT Command Manual describes the module (docs.rakwireless.com):
- `AT` -> OK; `AT+NJS=?` -> `AT+NJS=0|1`; `AT+DR=?` -> `AT+DR=<n>`; `AT+DR=<n>` sets it.
- `AT+JOIN=1:0:10:8` -> OK, then `+EVT:JOINED` after `join_s` (a new session: fCnt 0), or
  `+EVT:JOIN_FAILED_RX_TIMEOUT` while no gateway hears it (`joinable` false).
- `AT+SEND=<fPort>:<hex>` -> OK, the uplink goes out with the next fCnt, and `+EVT:TX_DONE`
  follows once the airtime and both receive windows (1 s and 2 s after it) have passed;
  AT_NO_NETWORK_JOINED before a join, AT_BUSY_ERROR while a send is under way,
  AT_DUTYCYCLE_RESTRICTED until the region's duty cycle allows the next one (an uplink of
  airtime T closes the band for T * (1/duty - 1)), AT_PARAM_ERROR for bad hex, a port outside
  1..223 or a payload over the data rate's limit.
- Anything else: AT_ERROR.
"""

from dataclasses import dataclass

from hardware.link_registry import load_links, lora_airtime_s

RX_WINDOWS_S = 2.0  # RX2 opens 2 s after the uplink ends (RECEIVE_DELAY2): TX_DONE after it


@dataclass(frozen=True)
class SentUplink:
    """What the modem put on the air: its session's fCnt, fPort, payload, data rate and when."""

    f_cnt: int
    f_port: int
    payload: bytes
    data_rate: int
    spreading_factor: int
    bandwidth_khz: int
    t: float
    airtime_s: float
    dev_addr: str  # the session's device address: a join gives a new one


class Rui3Modem:
    def __init__(self, on_uplink, region: str = "EU868", data_rate: int = 0, join_s: float = 5.0,
                 duty_cycle: float | None = None, time_scale: float = 1.0):
        """on_uplink(SentUplink): the radio side. duty_cycle: the region's (hardware/links/lora.toml)
        unless given; time_scale < 1 shrinks airtime, receive windows and join (fast tests)."""
        lora = load_links()["lora"]
        self.limits = lora.payloads(region)
        self.rates = lora.modulations(region)
        self.duty_cycle = lora.duty_cycle.get(region, 0.0) if duty_cycle is None else duty_cycle
        self.on_uplink = on_uplink
        self.data_rate = data_rate
        self.join_s = join_s
        self.time_scale = time_scale
        self.joinable = True
        self.joined = False
        self.f_cnt = 0
        self.joins = 0
        self.dev_addr = None
        self.pending = []  # (due time, line): events not yet told
        self.busy_until = 0.0
        self.band_free_at = 0.0
        self._buffer = b""
        self.counts = {"uplinks": 0, "busy": 0, "duty_cycle": 0, "too_long": 0}

    def receive(self, data: bytes, now: float) -> list:
        """Bytes from the board; the lines to send back (each without CR LF)."""
        self._buffer += data
        out = []
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            line = line.strip()
            if line:
                out += self.command(line.decode("ascii", "replace"), now)
        return out

    def due(self, now: float) -> list:
        """Events whose time has come (+EVT:JOINED, +EVT:TX_DONE)."""
        ready = [line for t, line in sorted(self.pending) if t <= now]
        self.pending = [(t, line) for t, line in self.pending if t > now]
        if "+EVT:JOINED" in ready:  # a new session: a new address, the frame counter from 0
            self.joins += 1
            self.joined, self.f_cnt, self.dev_addr = True, 0, "26011b%02x" % (self.joins % 256)
        return ready

    def next_due(self) -> float | None:
        return min((t for t, _ in self.pending), default=None)

    def command(self, line: str, now: float) -> list:
        if line == "AT":
            return ["OK"]
        if line == "AT+NJS=?":
            return ["AT+NJS=%d" % self.joined, "OK"]
        if line == "AT+DR=?":
            return ["AT+DR=%d" % self.data_rate, "OK"]
        if line.startswith("AT+DR="):
            value = line[len("AT+DR="):]
            if not value.isdigit() or int(value) >= len(self.limits):
                return ["AT_PARAM_ERROR"]
            self.data_rate = int(value)
            return ["OK"]
        if line.startswith("AT+JOIN"):
            return self._join(now)
        if line.startswith("AT+SEND="):
            return self._send(line[len("AT+SEND="):], now)
        return ["AT_ERROR"]

    def _join(self, now: float) -> list:
        if now < self.busy_until:
            return ["AT_BUSY_ERROR"]
        self.joined = False
        done = now + self.join_s * self.time_scale
        self.busy_until = done
        self.pending.append((done, "+EVT:JOINED" if self.joinable else "+EVT:JOIN_FAILED_RX_TIMEOUT"))
        return ["OK"]

    def _send(self, argument: str, now: float) -> list:
        if not self.joined:
            return ["AT_NO_NETWORK_JOINED"]
        if now < self.busy_until:
            self.counts["busy"] += 1
            return ["AT_BUSY_ERROR"]
        if now < self.band_free_at:
            self.counts["duty_cycle"] += 1
            return ["AT_DUTYCYCLE_RESTRICTED"]
        port, _, hex_payload = argument.partition(":")
        try:
            payload = bytes.fromhex(hex_payload)
        except ValueError:
            return ["AT_PARAM_ERROR"]
        if not port.isdigit() or not 1 <= int(port) <= 223:
            return ["AT_PARAM_ERROR"]
        if len(payload) > self.limits[self.data_rate]:
            self.counts["too_long"] += 1
            return ["AT_PARAM_ERROR"]
        sf, bandwidth = self.rates[self.data_rate]
        airtime = lora_airtime_s(len(payload), sf, bandwidth)
        uplink = SentUplink(self.f_cnt, int(port), payload, self.data_rate, sf, bandwidth, now, airtime,
                            self.dev_addr)
        self.f_cnt += 1
        self.counts["uplinks"] += 1
        scaled = airtime * self.time_scale
        self.busy_until = now + scaled + RX_WINDOWS_S * self.time_scale
        if self.duty_cycle:
            self.band_free_at = now + scaled / self.duty_cycle
        self.pending.append((self.busy_until, "+EVT:TX_DONE"))
        self.on_uplink(uplink)
        return ["OK"]
