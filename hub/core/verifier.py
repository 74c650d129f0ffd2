"""The hub's verifier core: one outcome per frame, counters per device and per link.

Sans-I/O: feed it (topic, frame bytes, arrival time), read the outcome and the counters.
Checks run in RFC 4303 order: the device, the CRC (link damage), the structure, the key
and tag length, the MAC (tampering), and only then the replay window, which nothing
unauthenticated can touch.
"""

import hmac
import struct
from hmac import compare_digest

try:  # OpenSSL's HMAC object: copy, update and digest all in C, without hmac.HMAC's Python wrapper
    from _hashlib import hmac_new as _hmac_new
except ImportError:  # a CPython built without OpenSSL
    _hmac_new = hmac.new

from agent import frame as wire
from agent.sealer import TOPIC_PREFIX
from agent.status import BIRTH
from hub.core.counters import (
    CORRUPT,
    EPOCH_REUSE,
    FORGED,
    LINK_SLOTS,
    LOST,
    LOST_UNKNOWN,
    MALFORMED,
    OUTCOME_OF,
    RATE_LIMITED,
    REDELIVERED,
    REPLAY,
    SLOTS,
    SOURCE_DROPS,
    UNENCRYPTED,
    VALID,
    counters_from,
    new_counters,
    new_link_counters,
    received,
)
from hub.core.opener import first_block as _first_block
from hub.core.opener import open_records
from hub.core.radio import RadioState
from hub.core.status import NEWEST, STATUS_SUFFIX, DeviceStatus, describe, is_status_topic, parse_status
from hub.core.window import EpochWindow

# Exactly one of these per frame (docs/protocol.md, "Outcomes").
OUTCOMES = ("valid", "corrupt", "forged", "duplicate", "replay", "malformed", "rate_limited", "unencrypted",
            "unknown_device", "redelivered")
# Epoch windows kept per device: the newest and the three before it, so a device that
# buffered frames and rebooted (even a few times) can still flush them, exactly once.
RETAINED_EPOCHS = 4
MAC_CACHE = 4096
# Events sampled per minute (record_event): kinds a sender can repeat at will.
FLOOD_KINDS = ("unknown_device", "forged", "replay", "unencrypted", "epoch_reuse")
EVENT_SAMPLES = 10
_TOPIC_SUFFIX = "/rec"
_decode = wire.decode
_ENCRYPTED = wire.FLAG_ENCRYPTED
_decode_compact = wire.decode_compact
_FULL_DOMAINS = (wire.MAC_DOMAIN, wire.STATUS_DOMAIN)  # a device's MAC domains: records, status
_COMPACT_DOMAINS = (wire.COMPACT_DOMAIN, wire.COMPACT_STATUS_DOMAIN)
_Corrupt = wire.CorruptFrame
_Malformed = wire.MalformedFrame
_digest = hmac.digest


class DeviceKeys:
    """What the hub knows of one device: its keys by key id, home link, minimum tag.

    current: the key id in use (default: the highest); accept_until: key id -> time after
    which that previous key is retired; revoked: every frame from the device is refused;
    compact: the device seals in the compact form (agent/frame.py), and in no other;
    encrypt: the device encrypts its records (agent/cipher.py): one in clear is refused.
    """

    __slots__ = ("device_id", "keys", "link", "min_tag_len", "current", "accept_until", "revoked", "compact",
                 "encrypt")

    def __init__(self, device_id: str, keys: dict, link: str, min_tag_len: int = 16, current: int | None = None,
                 accept_until: dict | None = None, revoked: bool = False, compact: bool = False,
                 encrypt: bool = False):
        self.device_id = device_id
        self.keys = dict(keys)
        self.link = link
        self.min_tag_len = min_tag_len
        self.current = max(self.keys) if current is None else current
        self.accept_until = dict(accept_until or {})
        self.revoked = revoked
        self.compact = compact
        self.encrypt = encrypt


class Verdict(tuple):
    """The outcome of one frame. The record fields are set only for authentic frames."""

    __slots__ = ()
    _fields = ("outcome", "device_id", "link", "epoch", "seq", "device_time_ms", "payload", "reason")
    outcome = property(lambda self: self[0])
    device_id = property(lambda self: self[1])
    link = property(lambda self: self[2])
    epoch = property(lambda self: self[3])
    seq = property(lambda self: self[4])
    device_time_ms = property(lambda self: self[5])
    payload = property(lambda self: self[6])
    reason = property(lambda self: self[7])

    def __repr__(self):
        return "Verdict(%s)" % ", ".join("%s=%r" % pair for pair in zip(self._fields, self))


_verdict = tuple.__new__


class _Device:
    # Kept small on purpose: the bench measures bytes per device at 100k devices.
    __slots__ = ("device_id", "link", "min_tag", "key_id", "key", "other_keys", "until", "revoked", "mac",
                 "counters", "current", "older", "tokens", "stamp", "credited", "domains", "encrypt", "ciphers")

    def __init__(self, spec: DeviceKeys, link_code: int):
        self.device_id = spec.device_id
        self.link = link_code  # the link of its latest accepted frame; the home link at first
        self.min_tag = spec.min_tag_len
        # The current key id is the fast path; previous ones (during rotation) sit in a dict.
        self.key_id = spec.current
        self.key = spec.keys[self.key_id]
        others = {kid: key for kid, key in spec.keys.items() if kid != self.key_id}
        self.other_keys = others or None
        self.until = spec.accept_until or None  # previous key id -> retired after this time
        self.revoked = spec.revoked
        self.domains = _COMPACT_DOMAINS if spec.compact else _FULL_DOMAINS  # its form: (records, status)
        self.encrypt = spec.encrypt
        self.ciphers = None  # key id -> (reset_nonce, update) (hub/core/opener.py), made at the first encrypted record
        self.mac = None  # cached HMAC state, see Verifier._mac_state
        self.counters = new_counters()
        self.current = None  # EpochWindow of the newest epoch seen
        self.older = None  # list of EpochWindows of retained older epochs
        self.tokens = None  # rate-limit token bucket: tokens left and when last refilled
        self.stamp = 0.0
        self.credited = 0.0  # the hub's stalled seconds already credited to this bucket


class Verifier:
    def __init__(self, devices, links: dict, rate_limits: dict | None = None, require_encryption=()):
        """devices: iterable of DeviceKeys; links: wire code -> link name (hardware/links).

        rate_limits: link name -> (frames per second, burst) for a per-device token bucket,
        spent only by authentic frames the window accepts as new; such a frame over the limit
        is `rate_limited` and not passed on. None: no limit.
        require_encryption: link names on which records in clear are refused (`unencrypted`).
        """
        self.link_names = dict(links)
        required = set(require_encryption)
        self._clear_refused = {code for code, name in self.link_names.items() if name in required}
        self._limits = None
        self._stalled = 0.0  # seconds the hub could not take frames in, summed (credit_stall)
        self._credit_until = 0.0  # the time after which stall credit left in a bucket lapses
        if rate_limits:
            self._limits = {code: rate_limits[name] for code, name in self.link_names.items() if name in rate_limits}
        codes = {name: code for code, name in self.link_names.items()}
        self._devices = {}
        for spec in devices:
            if spec.link not in codes:
                raise ValueError(f"device {spec.device_id}: unknown home link {spec.link!r}")
            self._devices[_record_topic(spec.device_id)] = _Device(spec, codes[spec.link])
        self.link_counters = {}
        self.unknown_device = 0
        self.events = []
        self._sampled = {}  # flood kind -> (minute, events recorded in it)
        self._mac_holders = []
        self.status = {}  # device id -> DeviceStatus, for devices that sent one

    # -- the hot path -------------------------------------------------------------

    def verify(self, topic: str, data: bytes, t: float, redelivered: bool = False) -> Verdict:
        """redelivered: the broker says it delivers this message again (MQTT DUP flag)."""
        dev = self._devices.get(topic)
        if dev is None:
            return self._unknown(topic, t)
        try:
            if dev.domains is _FULL_DOMAINS:
                key_id, link, epoch, seq, stamp, body, tag_at, tag_len = _decode(data)
            else:  # the device's own link: a compact frame carries none
                key_id, _, epoch, seq, stamp, body, tag_at, tag_len = _decode_compact(data)
                link = dev.link
        except _Corrupt as exc:
            return self._reject(dev, CORRUPT, str(exc), t)
        except _Malformed as exc:
            return self._reject(dev, MALFORMED, str(exc), t)
        name = self.link_names.get(link)
        if name is None:
            return self._reject(dev, MALFORMED, "unknown link code %d" % link, t)
        if dev.revoked:
            return self._reject(dev, FORGED, "device revoked", t)
        if tag_len < dev.min_tag:
            return self._reject(dev, FORGED, "%d-byte tag below the device minimum of %d" % (tag_len, dev.min_tag), t)
        if key_id == dev.key_id:
            mac = dev.mac or self._mac_state(dev)
            mac = mac.copy()
            mac.update(data[:tag_at])
            mac = mac.digest()
        else:
            key, problem = _previous_key(dev, key_id, t)
            if key is None:
                return self._reject(dev, FORGED, problem, t)
            mac = _digest(key, wire.mac_prefix(dev.device_id, dev.domains[0]) + data[:tag_at], "sha256")
        if not compare_digest(mac[:tag_len], data[tag_at : tag_at + tag_len]):
            return self._reject(dev, FORGED, "MAC mismatch", t)

        # Authentic: only now may the replay window and the loss accounting move.
        lc = self.link_counters.get(link) or self._new_link(link)
        window = dev.current
        if window is None or window.epoch != epoch:
            window = self._window_for(dev, epoch, seq)
        slot = window.accept(seq, link, dev.counters, self.link_counters, redelivered) if window is not None else REPLAY
        encrypted = data[0] & _ENCRYPTED
        if slot == VALID and not encrypted and (dev.encrypt or link in self._clear_refused):
            # Refused by policy, its position counted as received: not the link's loss.
            slot = UNENCRYPTED
            reason = ("record in clear from a device provisioned to encrypt" if dev.encrypt
                      else "record in clear on %s, which requires encryption" % name)
            self.record_event(t, dev.device_id, name, "unencrypted", reason)
        if slot == VALID:
            # Only authentic new frames spend the device's rate: garbage, forgeries, replays, copies
            # and the broker's redeliveries cost it nothing. One over the rate keeps its position
            # counted as received, so the hub's refusal is not charged to the link as loss.
            if self._limits is None or redelivered or self._take_token(dev, t):
                dev.counters[VALID] += 1
                lc[VALID] += 1
                dev.link = link
                payload = data[body:tag_at]
                if encrypted:  # authentic, so decrypting it is safe (encrypt-then-MAC)
                    opener = dev.ciphers.get(key_id) if dev.ciphers else None
                    reset, update = opener or self._cipher(dev, key_id)  # inlined: the hot path
                    reset(_first_block(1, key_id, 0, epoch, seq, 0))
                    payload = update(payload)
                return _verdict(Verdict, ("valid", dev.device_id, name, epoch, seq, stamp, payload, ""))
            slot = RATE_LIMITED
        dev.counters[slot] += 1
        lc[slot] += 1
        if slot == REPLAY:
            reason = ("epoch %d is retired" % epoch if window is None
                      else "seq %d is older than the replay window" % seq)
            self.record_event(t, dev.device_id, name, "replay", reason)
            return _verdict(Verdict, ("replay", dev.device_id, name, epoch, seq, stamp, None, reason))
        if slot == RATE_LIMITED:
            return _verdict(Verdict, ("rate_limited", dev.device_id, name, epoch, seq, stamp, None,
                                      "over the device rate limit"))
        if slot == UNENCRYPTED:
            return _verdict(Verdict, ("unencrypted", dev.device_id, name, epoch, seq, stamp, None, reason))
        if slot == REDELIVERED:
            return _verdict(Verdict, ("redelivered", dev.device_id, name, epoch, seq, stamp, None,
                                      "already accepted; delivered again by the broker"))
        return _verdict(Verdict, ("duplicate", dev.device_id, name, epoch, seq, stamp, None, "already accepted"))

    def verify_message(self, topic: str, data: bytes, t: float, redelivered: bool = False) -> Verdict:
        """verify() for a record, verify_status() for a status message."""
        if is_status_topic(topic):
            return self.verify_status(topic, data, t)
        return self.verify(topic, data, t, redelivered)

    def _cipher(self, dev, key_id):
        """(reset_nonce, update) of the device's AES-CTR context for a key id it sealed with,
        made at its first encrypted record and cached: each later record costs one update()."""
        key = dev.key if key_id == dev.key_id else dev.other_keys[key_id]
        opener = open_records(key)
        dev.ciphers = {**(dev.ciphers or {}), key_id: opener}
        return opener

    # -- status messages (birth, death, heartbeat) -------------------------------------

    def verify_status(self, topic: str, data: bytes, t: float) -> Verdict:
        """Check a status message like a record (CRC, MAC under the status domain, its own
        replay window), then keep what it says; a heartbeat's `sent` reveals tail losses.
        The Verdict's reason is the status type when it is valid."""
        device_id = _device_in_topic(topic)
        dev = self._devices.get(_record_topic(device_id)) if device_id is not None else None
        if dev is None or not topic.endswith(STATUS_SUFFIX):
            return self._unknown(topic, t)
        name = self.link_names[dev.link]
        try:
            if dev.domains is _FULL_DOMAINS:
                key_id, link, epoch, seq, _, body, tag_at, tag_len = _decode(data)
            else:
                key_id, _, epoch, seq, _, body, tag_at, tag_len = _decode_compact(data)
                link = dev.link
        except _Corrupt as exc:  # the link damaged it: counted as a damaged record is, on the device's link
            return self._reject(dev, CORRUPT, "status: %s" % exc, t)
        except _Malformed as exc:
            return _verdict(Verdict, ("malformed", dev.device_id, name, None, None, None, None, "status: %s" % exc))
        problem = self._status_forgery(dev, key_id, link, tag_len, tag_at, data, t)
        if problem is not None:
            self.record_event(t, dev.device_id, name, "forged", "status: " + problem)
            return _verdict(Verdict, ("forged", dev.device_id, name, None, None, None, None, "status: " + problem))
        name = self.link_names[link]
        try:
            if data[0] & _ENCRYPTED:
                raise ValueError("status messages are never encrypted (counter block 0x02 is reserved)")
            doc = parse_status(data[body:tag_at], dev.domains is not _FULL_DOMAINS)
        except ValueError as exc:
            return _verdict(Verdict, ("malformed", dev.device_id, name, epoch, seq, None, None, str(exc)))
        status = self.status.get(dev.device_id) or self.status.setdefault(dev.device_id, DeviceStatus())
        order = status.accept(epoch, seq)
        if doc["type"] == BIRTH:
            tag = bytes(data[tag_at : tag_at + tag_len])
            if order is not None:
                status.remember_birth(epoch, seq, tag)
            elif not status.is_copy_of_a_birth(epoch, seq, tag):
                self._epoch_reused(dev, name, epoch, t)
        if order is not None and self._limits is not None and not self._take_token(dev, t):
            # One bucket for all of a device's authentic new frames.
            return self._reject(dev, RATE_LIMITED, "status: over the device rate limit", t)
        if order is None:
            reason = "status %d of epoch %d was seen before or is too old" % (seq, epoch)
            self.record_event(t, dev.device_id, name, "replay", reason)
            return _verdict(Verdict, ("replay", dev.device_id, name, epoch, seq, None, None, reason))
        # Source drops leave gaps the window counts as lost: count them too, so the report can
        # take them out of the link's loss. The device's figure is cumulative.
        before = status.fields.get("source_drops", 0)
        dropped = doc["source_drops"] - before if doc["source_drops"] >= before else doc["source_drops"]
        if dropped and order is NEWEST:
            lc = self.link_counters.get(dev.link) or self._new_link(dev.link)
            dev.counters[SOURCE_DROPS] += dropped
            lc[SOURCE_DROPS] += dropped
        status.update(doc, name, epoch, t, order)
        if order is NEWEST:
            self._settle_ends(dev, doc, epoch)
        if doc["type"] != "heartbeat":
            self.record_event(t, dev.device_id, name, doc["type"], describe(doc, epoch))
        sent = doc.get("sent")
        if sent is not None and order is NEWEST:
            window = dev.current if dev.current is not None and dev.current.epoch == sent[0] else None
            window = window or self._window_for(dev, sent[0], 0)
            if window is not None:
                if dev.link not in self.link_counters:
                    self._new_link(dev.link)
                window.reveal(sent[1], dev.link, dev.counters, self.link_counters)
        return _verdict(Verdict, ("valid", dev.device_id, name, epoch, seq, None, data[body:tag_at], doc["type"]))

    def _epoch_reused(self, dev, name, epoch, t):
        # An authentic birth at a position of its status sequence already taken, that is not a
        # copy of the birth there: the device's epoch store went back (restored from a flash
        # image, or cloned), so its (epoch, seq) pairs, and with encryption its keystream, repeat.
        lc = self.link_counters.get(dev.link) or self._new_link(dev.link)
        dev.counters[EPOCH_REUSE] += 1
        lc[EPOCH_REUSE] += 1
        self.record_event(t, dev.device_id, name, "epoch_reuse",
                          "a new birth for epoch %d, which was born before: the device's epoch store went back "
                          "(restored or cloned); its sequence numbers and keystream repeat" % epoch)

    def _status_forgery(self, dev, key_id, link, tag_len, tag_at, data, t):
        """Why a status message is not authentic, or None when it is."""
        if link not in self.link_names:
            return "unknown link code %d" % link
        if dev.revoked:
            return "device revoked"
        if tag_len < dev.min_tag:
            return "%d-byte tag below the device minimum of %d" % (tag_len, dev.min_tag)
        key, problem = (dev.key, None) if key_id == dev.key_id else _previous_key(dev, key_id, t)
        if key is None:
            return problem
        mac = _digest(key, wire.mac_prefix(dev.device_id, dev.domains[1]) + data[:tag_at], "sha256")
        if not compare_digest(mac[:tag_len], data[tag_at : tag_at + tag_len]):
            return "MAC mismatch"
        return None

    def observe_radio(self, device_id: str, kind: str, epoch: int, seq: int, radio) -> None:
        """What a LoRaWAN uplink said beside an authentic, new frame: radio = (fCnt, [(gateway,
        rssi, snr)], spreading factor, DevAddr, frequency) (hub/core/radio.py); kind: "record" or "status"."""
        status = self.status.get(device_id) or self.status.setdefault(device_id, DeviceStatus())
        if status.radio is None:
            status.radio = RadioState()
        status.radio.observe(kind, epoch, seq, *radio)

    def restore_status(self, device_id: str, text: str) -> None:
        if _record_topic(device_id) in self._devices:
            self.status[device_id] = DeviceStatus.from_json(text)

    # -- the rarer paths ----------------------------------------------------------

    def _window_for(self, dev, epoch, seq):
        """The window for an authentic frame's epoch; None when that epoch is retired."""
        current = dev.current
        if current is None:  # first frame ever seen from this device
            dev.current = self._first_window(dev, epoch, seq)
            return dev.current
        older = dev.older or []
        if epoch > current.epoch:
            # A new epoch begins while we track the device: it started at seq 0.
            older = [w for w in older + [current] if w.epoch > epoch - RETAINED_EPOCHS]
            dev.older = older or None
            dev.current = EpochWindow(epoch, 0)
            return dev.current
        if epoch <= current.epoch - RETAINED_EPOCHS:
            return None
        for window in older:
            if window.epoch == epoch:
                return window
        window = self._first_window(dev, epoch, seq)  # an older epoch we never saw begin
        dev.older = older + [window]
        return window

    def _first_window(self, dev, epoch, seq):
        """A window for an epoch first seen at seq: counted from 0 when the hub saw the epoch's
        birth, else from seq, the positions before it reported as lost_unknown."""
        status = self.status.get(dev.device_id)
        if status is not None and status.born == epoch:
            return EpochWindow(epoch, 0)
        if seq:
            lc = self.link_counters.get(dev.link) or self._new_link(dev.link)
            dev.counters[LOST_UNKNOWN] += seq
            lc[LOST_UNKNOWN] += seq
        return EpochWindow(epoch, seq)

    def _known_window(self, dev, epoch):
        """The window of an epoch the hub has seen frames of, else None (never creates one)."""
        for window in ([dev.current] if dev.current else []) + (dev.older or []):
            if window.epoch == epoch:
                return window
        return None

    def _settle_ends(self, dev, doc, epoch) -> None:
        # A birth says how the epoch before it ended (the records a reset destroyed); each
        # status of a later epoch checks whether what the device kept has come by now.
        prev = doc.get("prev")
        if doc["type"] == BIRTH and prev is not None and prev[0] < epoch:
            window = self._known_window(dev, prev[0])
            if window is not None:
                window.end_epoch(prev[1], prev[2], prev[3])
        windows = [w for w in ([dev.current] if dev.current else []) + (dev.older or []) if w.ended is not None]
        if windows:
            if dev.link not in self.link_counters:
                self._new_link(dev.link)
            for window in windows:
                window.settle_end(dev.link, dev.counters, self.link_counters, drained=doc["queued"] == 0)

    def _reject(self, dev, slot, reason, t):
        # Unauthenticated frames cannot name their link: charge the device's current one.
        lc = self.link_counters.get(dev.link) or self._new_link(dev.link)
        dev.counters[slot] += 1
        lc[slot] += 1
        name = self.link_names[dev.link]
        outcome = OUTCOME_OF[slot]
        if slot == FORGED:
            self.record_event(t, dev.device_id, name, outcome, reason)
        return _verdict(Verdict, (outcome, dev.device_id, name, None, None, None, None, reason))

    def credit_stall(self, seconds: float, t: float) -> None:
        """The hub took no frames in for `seconds` before t (stopped, storage paused, intake
        blocked, broker unreachable): the devices kept sending, and the broker or their own
        queues kept what they sent. Each device's bucket gets what it would have refilled
        meanwhile on top of its burst, so a backlog sent within the rate drains whole; what
        is left of that credit lapses once as much time again has passed."""
        if seconds > 0 and self._limits is not None:
            self._stalled += seconds
            self._credit_until = max(self._credit_until, t) + seconds

    def _take_token(self, dev, t):
        limit = self._limits.get(dev.link)
        if limit is None:
            return True
        rate, burst = limit
        if dev.tokens is None:
            dev.tokens, dev.stamp = float(burst), t
        elapsed = t - dev.stamp
        if elapsed > 0:  # a clock step backwards refills nothing
            # Refilling stops at the burst; stall credit above it stays until it lapses.
            cap = float(burst) if t > self._credit_until else max(float(burst), dev.tokens)
            dev.tokens = min(cap, dev.tokens + elapsed * rate)
            dev.stamp = t
        if dev.credited != self._stalled:
            if t <= self._credit_until:
                dev.tokens += (self._stalled - dev.credited) * rate
            dev.credited = self._stalled
        if dev.tokens < 1.0:
            return False
        dev.tokens -= 1.0
        return True

    def _new_link(self, code):
        counters = self.link_counters[code] = new_link_counters()
        return counters

    def _mac_state(self, dev):
        """HMAC state with the key and MAC prefix absorbed, copied for each frame.

        It saves a third of the MAC's cost but weighs about 800 bytes, so at most
        MAC_CACHE devices hold one; when full, all are dropped and rebuilt on use.
        """
        if len(self._mac_holders) >= MAC_CACHE:
            for holder in self._mac_holders:
                holder.mac = None
            self._mac_holders.clear()
        dev.mac = _hmac_new(dev.key, wire.mac_prefix(dev.device_id, dev.domains[0]), digestmod="sha256")
        self._mac_holders.append(dev)
        return dev.mac

    def refuse(self, topic: str, reason: str, t: float, unknown_label: str | None = None) -> Verdict:
        """A message the way in could not read a frame from (an uplink event without data,
        say): `malformed` for the device of topic, or `unknown_device` under unknown_label
        when no device has that topic."""
        dev = self._devices.get(topic)
        if dev is None:
            return self._unknown(topic, t, unknown_label, reason)
        return self._reject(dev, MALFORMED, reason, t)

    def _unknown(self, topic, t, device=None, reason=None):
        # No state is created for a device we hold no key for: only a counter and an event.
        self.unknown_device += 1
        if device is None:
            device = _device_in_topic(topic)
        if reason is None:
            reason = "no key for this device" if device is not None else "not a linkseal record or status topic"
        if device is not None and not _plain_id(device):
            device = _escaped(device)
            reason += " (its id is not plain: shown escaped)"
        self.record_event(t, device, None, "unknown_device", reason)
        return _verdict(Verdict, ("unknown_device", device, None, None, None, None, None, reason))

    def record_event(self, t, device, link, kind, reason):
        """Add a security or health event; adapters drain them into storage.

        Kinds an attacker can repeat at will (FLOOD_KINDS) are sampled: the first
        EVENT_SAMPLES of a kind in a minute are kept, then one event says the rest of that
        minute is only counted (the counters hold every frame), so a flood adds a bounded
        number of event rows instead of one per frame."""
        if kind in FLOOD_KINDS:
            minute = int(t // 60)
            seen_minute, seen = self._sampled.get(kind, (None, 0))
            seen = seen + 1 if seen_minute == minute else 1
            self._sampled[kind] = (minute, seen)
            if seen > EVENT_SAMPLES + 1:
                return
            if seen == EVENT_SAMPLES + 1:
                device, link, reason = None, None, (f"more than {EVENT_SAMPLES} {kind} events this minute: "
                                                    "the rest are counted, not listed")
        self.events.append({"t": t, "device": device, "link": link, "kind": kind, "reason": reason})

    # -- reading the state --------------------------------------------------------

    def devices(self):
        """(device id, current link name, counters) for every device that sent anything."""
        for dev in self._devices.values():
            if received(dev.counters) or dev.counters[LOST] or dev.device_id in self.status:
                yield dev.device_id, self.link_names[dev.link], dev.counters

    def links(self):
        """(link name, counters) for every link that carried anything."""
        for code, counters in sorted(self.link_counters.items()):
            yield self.link_names[code], counters

    def update_devices(self, devices) -> None:
        """Take a new key file's devices (rotation, revocation, new devices), keeping each
        known device's windows, counters and rate-limit state; devices no longer listed
        become unknown."""
        codes = {name: code for code, name in self.link_names.items()}
        updated = {}
        for spec in devices:
            topic = _record_topic(spec.device_id)
            fresh = _Device(spec, codes[spec.link])
            old = self._devices.get(topic)
            if old is not None:
                fresh.link, fresh.counters, fresh.current, fresh.older = old.link, old.counters, old.current, old.older
                fresh.tokens, fresh.stamp, fresh.credited = old.tokens, old.stamp, old.credited
            updated[topic] = fresh
        self._devices = updated
        self._mac_holders = []  # the cached HMAC states belonged to the old objects

    @property
    def device_count(self) -> int:
        return len(self._devices)

    def counters_for(self, topic: str):
        """(device id, live counter array) for a known device's record or status topic, else None."""
        dev = self._devices.get(topic)
        if dev is None and topic.endswith(STATUS_SUFFIX):
            dev = self._devices.get(topic[: -len(STATUS_SUFFIX)] + _TOPIC_SUFFIX)
        return None if dev is None else (dev.device_id, dev.counters)

    def counters_for_device(self, device_id: str):
        return self._devices[_record_topic(device_id)].counters

    def current_link(self, device_id: str) -> str:
        return self.link_names[self._devices[_record_topic(device_id)].link]

    # -- persistence ----------------------------------------------------------------
    # Storage keeps each device's state with the records it let in (same transaction),
    # so after a restart nothing accepted before is accepted again.

    _DEVICE_HEAD = struct.Struct(">BBB")  # format, current link code, number of windows
    _FORMAT = 5
    # Counters stored by each format: 1 before source_drops, 2 before redelivered, 3 before the
    # on-device losses; format 4 also has windows with one ring block more and a write-off;
    # 5 adds unencrypted and epoch_reuse.
    _FORMAT_SLOTS = {1: SOURCE_DROPS, 2: REDELIVERED, 3: REDELIVERED + 1, 4: UNENCRYPTED, 5: SLOTS}

    def device_state(self, device_id: str) -> bytes:
        dev = self._devices[_record_topic(device_id)]
        windows = ([dev.current] if dev.current else []) + (dev.older or [])
        return (self._DEVICE_HEAD.pack(self._FORMAT, dev.link, len(windows)) + dev.counters.tobytes()
                + b"".join(w.to_bytes() for w in windows))

    @classmethod
    def stored_counters(cls, device_id: str, data: bytes):
        """(counter array, offset of the windows) of a stored device state."""
        version = data[0]
        if version not in cls._FORMAT_SLOTS:
            raise ValueError(f"device {device_id}: stored state has unknown format {version}")
        offset = cls._DEVICE_HEAD.size
        size = 8 * cls._FORMAT_SLOTS[version]
        return counters_from(data[offset : offset + size]), offset + size

    def restore_device(self, device_id: str, data: bytes) -> bool:
        """Load a stored state; False (and nothing changed) for a device no longer in the key file."""
        dev = self._devices.get(_record_topic(device_id))
        if dev is None:
            return False
        version, link, count = self._DEVICE_HEAD.unpack_from(data)
        counters, offset = self.stored_counters(device_id, data)
        windows = []
        for _ in range(count):
            window, offset = EpochWindow.from_bytes(data, offset, old_ring=version < 4)
            windows.append(window)
        dev.link = link if link in self.link_names else dev.link
        dev.counters = counters
        dev.current = windows[0] if windows else None
        dev.older = windows[1:] or None
        return True

    def restore_link(self, name: str, counters: bytes) -> None:
        code = next((c for c, n in self.link_names.items() if n == name), None)
        if code is not None:
            self.link_counters[code] = counters_from(counters, LINK_SLOTS)

    def drain_events(self) -> list:
        """Hand the security events so far to an adapter (storage) and forget them."""
        events, self.events = self.events, []
        return events


def _previous_key(dev, key_id: int, t: float):
    """(key, None) for a key id the device rotated away from and may still use, else (None, why)."""
    if dev.other_keys is None or key_id not in dev.other_keys:
        return None, "unknown key id %d" % key_id
    if dev.until is not None and t > dev.until.get(key_id, float("inf")):
        return None, "retired key"
    return dev.other_keys[key_id], None


def _record_topic(device_id: str) -> str:
    # agent.topic_for without its checks: ids here come from the key file, checked on load.
    return TOPIC_PREFIX + device_id + _TOPIC_SUFFIX


_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


def _plain_id(device: str) -> bool:
    return all(ch in _PLAIN for ch in device)


def _escaped(device: str) -> str:
    """An attacker's id as it cannot mislead: every character that could not be in a real id
    (spaces, controls, bidirectional overrides, look-alikes) as a \\x, \\u or \\U escape, so
    `pump-1 ` is shown as `pump-1\\x20`, never as `pump-1`."""
    return "".join(ch if ch in _PLAIN else ("\\x%02x" % ord(ch) if ord(ch) < 0x100 else
                                            "\\u%04x" % ord(ch) if ord(ch) < 0x10000 else "\\U%08x" % ord(ch))
                   for ch in device)


def _device_in_topic(topic: str):
    """The device id in a record or status topic, shortened; None when the topic is neither."""
    if not topic.startswith(TOPIC_PREFIX):
        return None
    for suffix in (_TOPIC_SUFFIX, STATUS_SUFFIX):
        if topic.endswith(suffix):
            break
    else:
        return None
    device = topic[len(TOPIC_PREFIX) : -len(suffix)]
    if not device or "/" in device:
        return None
    return device[:64]
