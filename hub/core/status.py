"""Devices' status messages at the hub: birth, death and heartbeat (agent/status.py).

They are sealed like records under their own MAC domain and sequence numbers, so they are
checked the same way (CRC, MAC) but replay-protected by a small window of their own.
What they say is kept per device (`DeviceStatus`) and shown in reports; a heartbeat's
`sent` position lets the verifier count records lost at the tail of a stream.
"""

import json

from agent import status as device_status
from agent.frame import MalformedFrame, get_varint
from hub.core.radio import RadioState

STATUS_SUFFIX = "/status"
KINDS = device_status.KINDS
STATUS_WINDOW = 64
BIRTHS_KEPT = 8  # the newest births' (epoch, seq, tag): a copy of one is a replay, not a reused epoch
NEWEST, LATE = "newest", "late"
_COUNTER_MAX = 0xFFFFFFFF
ANNOUNCED = ("heartbeat_s", "record_interval_s")  # what a birth may say of its pace
_PERIOD_MAX = 7 * 86400


def is_status_topic(topic: str) -> bool:
    return topic.endswith(STATUS_SUFFIX)


def parse_status(payload: bytes, compact: bool = False) -> dict:
    """The status document, checked; ValueError naming the field that is wrong.
    compact: the device is in the compact form, which sends its status in a few bytes."""
    if compact:
        doc = _read_compact(payload)
    else:
        try:
            doc = json.loads(payload)
        except ValueError:
            raise ValueError("status payload is not JSON") from None
    if not isinstance(doc, dict) or doc.get("type") not in KINDS:
        raise ValueError(f"status type must be one of {', '.join(KINDS)}")
    for field in ("next_seq", "queued", "source_drops"):
        if not _counter(doc.get(field)):
            raise ValueError(f"status field {field} must be a whole number 0..{_COUNTER_MAX}")
    if doc.get("too_large", 0) > doc["source_drops"]:
        raise ValueError("status field too_large counts some of source_drops: it cannot be larger")
    for field in ("refused", "flash_writes", "too_large"):
        if field in doc and not _counter(doc[field]):
            raise ValueError(f"status field {field} must be a whole number 0..{_COUNTER_MAX}")
    sent = doc.get("sent")
    if sent is not None and not (isinstance(sent, list) and len(sent) == 2 and all(map(_counter, sent))):
        raise ValueError("status field sent must be [epoch, seq]")
    prev = doc.get("prev")
    if prev is not None and not (isinstance(prev, list) and len(prev) == 4 and all(map(_counter, prev))
                                 and prev[1] <= prev[2] and prev[3] <= prev[2]):
        raise ValueError("status field prev must be [epoch, kept_end, sealed_end, lease], kept_end and lease "
                         "at most sealed_end")
    for field in ANNOUNCED:
        value = doc.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0.001 <= value <= _PERIOD_MAX):
            raise ValueError(f"status field {field} must be seconds from 0.001 to {_PERIOD_MAX}")
    for field in ("fw", "reset_cause"):
        if field in doc and not (isinstance(doc[field], str) and len(doc[field]) <= 64):
            raise ValueError(f"status field {field} must be a short string")
    return doc


def _read_compact(payload: bytes) -> dict:
    """The document of a compact status (agent/compact_status.py)."""
    if len(payload) < 2 or not 1 <= payload[0] <= len(KINDS) or payload[1] & ~(
            device_status.COMPACT_SENT | device_status.COMPACT_PREV):
        raise ValueError("compact status: unknown type or flags")
    flags, count = payload[1], 5 + (2 if payload[1] & device_status.COMPACT_SENT else 0) + (
        4 if payload[1] & device_status.COMPACT_PREV else 0)
    values, pos = [], 2
    try:
        for _ in range(count):
            value, pos = get_varint(payload, pos, len(payload), _COUNTER_MAX)
            values.append(value)
    except MalformedFrame as exc:
        raise ValueError(f"compact status: {exc}") from None
    doc = dict(zip(("type", "next_seq", "queued", "source_drops", "refused", "too_large"),
                   [KINDS[payload[0] - 1]] + values[:5]))
    rest = values[5:]
    if flags & device_status.COMPACT_SENT:
        doc["sent"], rest = rest[:2], rest[2:]
    if flags & device_status.COMPACT_PREV:
        doc["prev"] = rest
    if doc["type"] == device_status.BIRTH:
        if pos >= len(payload) or payload[pos] >= len(device_status.RESET_CAUSES):
            raise ValueError("compact status: a birth ends with a known reset cause")
        doc["reset_cause"], pos = device_status.RESET_CAUSES[payload[pos]], pos + 1
    if pos != len(payload):
        raise ValueError("compact status: bytes after its last field")
    return doc


def _counter(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _COUNTER_MAX


class DeviceStatus:
    """The latest status of one device, and the replay windows of its status messages in
    the newest epoch and the one before (a power-cut device's death can arrive after its
    next birth: the broker publishes the will when it notices the old connection is gone)."""

    __slots__ = ("epoch", "top", "seen", "previous", "fields", "born", "radio", "births")

    def __init__(self):
        self.born = -1  # the epoch of the newest birth accepted
        self.epoch = -1
        self.top = -1
        self.seen = 0  # bit i: status seq top - i was accepted
        self.previous = None  # [epoch, top, seen] of the epoch before
        self.fields = {}
        self.radio = None  # RadioState of a LoRaWAN device (hub/core/radio.py), kept with its status
        self.births = []  # [epoch, status seq, first 8 tag bytes as hex] of the newest accepted births

    def remember_birth(self, epoch: int, seq: int, tag: bytes) -> None:
        self.births = (self.births + [[epoch, seq, tag[:8].hex()]])[-BIRTHS_KEPT:]

    def is_copy_of_a_birth(self, epoch: int, seq: int, tag: bytes) -> bool:
        """True for the bytes of a birth accepted before (a replay, or the broker's redelivery)."""
        return [epoch, seq, tag[:8].hex()] in self.births

    def accept(self, epoch: int, seq: int):
        """NEWEST for the newest status so far, LATE for an older one never seen before (a
        death message, sealed at connect, comes after the heartbeats), None for a replay."""
        if epoch > self.epoch:
            if self.epoch >= 0:
                self.previous = [self.epoch, self.top, self.seen]
            self.epoch, self.top, self.seen = epoch, seq, 1
            return NEWEST
        if epoch == self.epoch:
            self.top, self.seen, order = _mark(self.top, self.seen, seq)
            return order
        if self.previous is not None and epoch == self.previous[0]:
            self.previous[1], self.previous[2], order = _mark(self.previous[1], self.previous[2], seq)
            return LATE if order else None
        return None

    def update(self, doc: dict, link: str, epoch: int, t: float, order) -> None:
        """Keep what a status says; a LATE one only tells whether the device is online."""
        fields = self.fields
        if order is NEWEST and doc["type"] == device_status.BIRTH:
            self.born = epoch
        if order is LATE:
            if doc["type"] == device_status.DEATH and epoch == self.epoch:
                fields.update(online=False, last=doc["type"], t=t)
            return
        fields.update(online=doc["type"] != device_status.DEATH, last=doc["type"], t=t, link=link, epoch=epoch,
                      next_seq=doc["next_seq"], queued=doc["queued"], source_drops=doc["source_drops"],
                      refused=doc.get("refused", 0), too_large=doc.get("too_large", 0))
        for name in ("fw", "reset_cause", "flash_writes"):
            if name in doc:
                fields[name] = doc[name]
        for name in ANNOUNCED:  # its pace, as its latest status says; a birth without it: none known
            if name in doc:
                fields[name] = doc[name]
            elif doc["type"] == device_status.BIRTH:
                fields.pop(name, None)

    def to_json(self) -> str:
        doc = {"epoch": self.epoch, "top": self.top, "seen": self.seen, "previous": self.previous,
               "fields": self.fields, "born": self.born, "births": self.births}
        if self.radio is not None:
            doc["radio"] = self.radio.to_dict()
        return json.dumps(doc)

    @classmethod
    def from_json(cls, text: str) -> "DeviceStatus":
        data = json.loads(text)
        status = cls()
        status.epoch, status.top, status.seen, status.fields = data["epoch"], data["top"], data["seen"], data["fields"]
        status.previous = data.get("previous")
        status.born = data.get("born", -1)
        status.births = data.get("births", [])
        status.radio = RadioState.from_dict(data["radio"]) if "radio" in data else None
        return status


def statuses_of(rows) -> tuple[dict, dict]:
    """(device -> status fields, device -> RadioState of those that have one), from stored
    (device, DeviceStatus.to_json()) rows: each parsed once."""
    fields, radio = {}, {}
    for device, text in rows:
        data = json.loads(text)
        fields[device] = data["fields"]
        if "radio" in data:
            radio[device] = RadioState.from_dict(data["radio"])
    return fields, radio


def _mark(top: int, seen: int, seq: int):
    """(top, seen, order) after status seq arrives in a window: order NEWEST, LATE or None."""
    if seq <= top - STATUS_WINDOW:
        return top, seen, None
    if seq > top:
        return seq, ((seen << (seq - top)) | 1) & ((1 << STATUS_WINDOW) - 1), NEWEST
    bit = 1 << (top - seq)
    if seen & bit:
        return top, seen, None
    return top, seen | bit, LATE


def describe(doc: dict, epoch: int) -> str:
    """One line for the event log."""
    if doc["type"] == device_status.DEATH:
        return f"connection lost (last will of epoch {epoch}); {doc['queued']} records were queued"
    text = (f"epoch {epoch}, next seq {doc['next_seq']}, {doc['queued']} queued, "
            f"{doc['source_drops']} dropped at the source")
    if doc["type"] == device_status.BIRTH:
        text = f"connected: firmware {doc.get('fw', '?')}, reset cause {doc.get('reset_cause', '?')}, " + text
    return text
