"""What LoRaWAN uplinks tell beyond the frame: where records were lost, and how each gateway
hears the device. Sans-I/O: authentic uplinks (kind, epoch, seq, fCnt, gateways, spreading
factor) in, figures out.

Every uplink a device's modem sends takes the next frame counter (fCnt) of its LoRaWAN
session, records and status messages alike; a join starts a session at fCnt 0, with a new
device address (DevAddr). So:

- `lost_after_transmission`: uplinks the device sent that never reached the hub: fCnt values
  never seen, from 0 to the highest seen in each session (lost in the air, at the network
  server or by its integration). What a session sent after its last uplink seen is invisible
  to the frame counter (the sequence numbers still count those records as lost).
- `lost_before_transmission`: records sealed but never sent (a full queue, a frame too long
  for the data rate): sequence numbers missing between two records with fewer lost uplinks
  between them than missing records. Between two records, `m` records missing and `l` uplinks
  lost: the lost uplinks were records or status messages, so at least m - l records never
  left the device, exactly m - l + (status messages lost there). Status messages number
  themselves (their own sequence), so their losses are known once a later one arrives; the
  figure is exact up to the device's newest status message, and never above the records the
  sequence numbers count as lost. Hold it against what the device itself reports as dropped
  (`source_drops`).
- `gateways`: per gateway, frames heard, the share of the device's uplinks it heard, and the
  median RSSI and SNR of its last RING frames; per spreading factor, frames and median SNR;
  per channel (frequency), frames.

State per device is bounded: MAX_GATEWAYS entries of gateways (the first seen, then one
"other" for the rest) and RING samples each.
"""

import sys
from array import array

RING = 32  # samples kept per gateway and spreading factor for the medians
SNR_STEP = 4  # SNR kept in quarter dB, RSSI in whole dBm: two bytes a sample (array "h")
MAX_GATEWAYS = 8
MAX_CHANNELS = 16  # EU868 has 8 uplink channels at most in use; US915 sub-band 2, 8 (+1)
OTHER = "other"
RECORD, STATUS = "record", "status"


class RadioState:
    __slots__ = ("session", "f_cnt", "uplinks", "lost_after", "span_missing", "span_lost", "bound", "last_record",
                 "since_record", "epochs_seen", "status_epoch", "status_top", "status_lost", "gateways", "spreading",
                 "frequencies")

    def __init__(self):
        self.session = None  # the current session's DevAddr, when the network server gives it
        self.f_cnt = None  # newest fCnt seen in the current session
        self.uplinks = 0  # authentic uplinks seen
        self.lost_after = 0
        self.span_missing = 0  # records missing between records, over every span counted
        self.span_lost = 0  # uplinks lost in those spans
        self.bound = 0  # sum over spans of max(0, missing - lost): records surely never sent
        self.last_record = None  # [epoch, seq] of the newest record seen in this session, or None
        self.since_record = 0  # uplinks lost since it
        self.epochs_seen = -1  # the newest epoch seen
        self.status_epoch = -1
        self.status_top = -1  # newest status seq in status_epoch
        self.status_lost = 0  # status messages never seen, below the newest of each epoch
        self.gateways = {}  # gateway id -> [frames, array of rssi, array of snr * SNR_STEP]
        self.spreading = {}  # spreading factor -> [frames, array of snr * SNR_STEP]
        self.frequencies = {}  # channel (Hz) -> frames: a region has a few channels (at most MAX_CHANNELS kept)

    def observe(self, kind: str, epoch: int, seq: int, f_cnt: int, gateways, spreading_factor,
                session=None, frequency=None) -> None:
        """One authentic, new uplink: a record (seq: its sequence number) or a status message
        (seq: the status sequence number); session: its DevAddr, frequency: its channel (Hz),
        when known."""
        self.uplinks += 1
        if self.f_cnt is None or f_cnt <= self.f_cnt or session != self.session:
            # A new session: the counter started again at a join.
            self.session = session
            lost = f_cnt
            # Its first records follow on from the start of a new epoch (a reboot joins again);
            # after a join within an epoch, what went before is not known.
            self.last_record = [epoch, -1] if epoch > self.epochs_seen else None
            self.since_record = 0
        else:
            lost = f_cnt - self.f_cnt - 1
            if kind == STATUS and seq == 0 and epoch > self.epochs_seen:
                # A reboot the modem's session outlived: the new epoch's birth. What was lost
                # before it belongs to the epoch before, whose end is not known here: lost
                # uplinks all the same, but no span of this epoch's records.
                self.lost_after += lost
                self.last_record, self.since_record, lost = [epoch, -1], 0, 0
        self.f_cnt = f_cnt
        self.lost_after += lost
        self.since_record += lost
        if kind == RECORD:
            self._record(epoch, seq)
        else:
            self._status(epoch, seq)
        self.epochs_seen = max(self.epochs_seen, epoch)
        for gateway, rssi, snr in gateways:
            key = gateway if gateway in self.gateways or len(self.gateways) < MAX_GATEWAYS - 1 else OTHER
            key = sys.intern(key)  # a site's few gateway ids, shared by all its devices' states
            entry = self.gateways.get(key) or self.gateways.setdefault(key, [0, array("h"), array("h")])
            entry[0] += 1
            _keep(entry[1], rssi)
            _keep(entry[2], snr * SNR_STEP)
        if spreading_factor:
            entry = self.spreading.get(int(spreading_factor)) or self.spreading.setdefault(
                int(spreading_factor), [0, array("h")])
            entry[0] += 1
            if gateways:
                _keep(entry[1], max(snr for _, _, snr in gateways) * SNR_STEP)  # the best gateway's
        if frequency and (frequency in self.frequencies or len(self.frequencies) < MAX_CHANNELS):
            self.frequencies[int(frequency)] = self.frequencies.get(int(frequency), 0) + 1

    def _record(self, epoch, seq):
        last = self.last_record
        if last is not None and last[0] == epoch and seq > last[1]:
            missing, lost = seq - last[1] - 1, self.since_record
            self.span_missing += missing
            self.span_lost += lost
            self.bound += max(0, missing - lost)
        self.last_record = [epoch, seq]
        self.since_record = 0

    def _status(self, epoch, seq):
        if epoch > self.status_epoch:
            self.status_epoch, self.status_top = epoch, -1
        if epoch == self.status_epoch and seq > self.status_top:
            self.status_lost += seq - self.status_top - 1
            self.status_top = seq

    def lost_before(self) -> int:
        """Records sealed but never sent (see the module's docstring)."""
        exact = self.span_missing - self.span_lost + self.status_lost
        return max(self.bound, min(exact, self.span_missing))

    def figures(self) -> dict:
        """The report's `radio` of one device."""
        return {"uplinks": self.uplinks, "lost_after_transmission": self.lost_after,
                "lost_before_transmission": self.lost_before(),
                "gateways": {gateway: {"frames": frames, "share": round(frames / max(self.uplinks, 1), 4),
                                       "rssi_median": _median(rssi), "snr_median": _median(snr, SNR_STEP)}
                             for gateway, (frames, rssi, snr) in sorted(self.gateways.items())},
                "spreading_factors": {str(sf): {"frames": frames, "snr_median": _median(snr, SNR_STEP)}
                                      for sf, (frames, snr) in sorted(self.spreading.items())},
                "frequencies": {str(hz): frames for hz, frames in sorted(self.frequencies.items())}}

    def to_dict(self) -> dict:
        data = {name: getattr(self, name) for name in self.__slots__ if name not in ("gateways", "spreading")}
        data["gateways"] = {g: [frames, list(rssi), list(snr)] for g, (frames, rssi, snr) in self.gateways.items()}
        data["spreading"] = {str(sf): [frames, list(snr)] for sf, (frames, snr) in self.spreading.items()}
        data["frequencies"] = {str(hz): frames for hz, frames in self.frequencies.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "RadioState":
        state = cls()
        for name in cls.__slots__:
            if name in data and name not in ("gateways", "spreading", "frequencies"):
                setattr(state, name, data[name])
        state.gateways = {g: [frames, array("h", rssi), array("h", snr)]
                          for g, (frames, rssi, snr) in data.get("gateways", {}).items()}
        state.spreading = {int(sf): [frames, array("h", snr)]
                           for sf, (frames, snr) in data.get("spreading", {}).items()}
        state.frequencies = {int(hz): frames for hz, frames in data.get("frequencies", {}).items()}
        return state


def link_figures(states) -> dict:
    """The report's `radio` of a link: its devices' figures summed, gateways merged."""
    out = {"uplinks": 0, "lost_after_transmission": 0, "lost_before_transmission": 0, "gateways": {},
           "spreading_factors": {}, "frequencies": {}}
    samples = {}
    for state in states:
        out["uplinks"] += state.uplinks
        out["lost_after_transmission"] += state.lost_after
        out["lost_before_transmission"] += state.lost_before()
        for hz, frames in state.frequencies.items():
            out["frequencies"][str(hz)] = out["frequencies"].get(str(hz), 0) + frames
        for gateway, (frames, rssi, snr) in state.gateways.items():
            entry = samples.setdefault(gateway, [0, [], []])
            entry[0] += frames
            entry[1] += rssi
            entry[2] += snr
        for sf, (frames, snr) in state.spreading.items():
            entry = samples.setdefault(("sf", sf), [0, []])
            entry[0] += frames
            entry[1] += snr
    for key, entry in sorted(samples.items(), key=lambda item: str(item[0])):
        if isinstance(key, tuple):
            out["spreading_factors"][str(key[1])] = {"frames": entry[0], "snr_median": _median(entry[1], SNR_STEP)}
        else:
            out["gateways"][key] = {"frames": entry[0], "share": round(entry[0] / out["uplinks"], 4),
                                    "rssi_median": _median(entry[1]), "snr_median": _median(entry[2], SNR_STEP)}
    return out


def _keep(ring, value) -> None:
    ring.append(max(-32768, min(32767, round(value))))
    if len(ring) > RING:
        del ring[0]


def _median(values, step=1):
    if not values:
        return None
    ordered = sorted(values)
    middle = len(ordered) // 2
    value = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return value / step if step != 1 else value
