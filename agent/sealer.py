# The agent core: seals records into v1 frames. Pure (no I/O, no clock), and written for
# MicroPython first: hashlib (and the codec), no per-call key handling.
import hashlib

from . import frame
from .link_codes import LINKS

TOPIC_PREFIX = "linkseal/v1/"
MAX_DEVICE_ID_LEN = 64
MIN_KEY_LEN = 16
_BLOCK = 64  # SHA-256 block size, for HMAC's padded keys
_ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:"


def check_device_id(device_id):
    """Raise ValueError unless device_id can stand as one MQTT topic level and in an ACL."""
    if not isinstance(device_id, str):
        raise ValueError("device id must be a string")
    if not device_id:
        raise ValueError("device id is empty")
    if len(device_id.encode()) > MAX_DEVICE_ID_LEN:
        raise ValueError("device id is longer than %d bytes" % MAX_DEVICE_ID_LEN)
    for ch in device_id:
        if ch not in _ID_CHARS:
            raise ValueError("device id has the character %r; allowed: letters, digits and - _ . :" % ch)


def topic_for(device_id):
    """The MQTT topic a device publishes its records on."""
    check_device_id(device_id)
    return TOPIC_PREFIX + device_id + "/rec"


def status_topic_for(device_id):
    """The MQTT topic of a device's birth, death and heartbeat messages."""
    check_device_id(device_id)
    return TOPIC_PREFIX + device_id + "/status"


def hmac_pads(key):
    """HMAC-SHA256's (inner, outer) padded keys (RFC 2104): computed once per key."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    return [bytes([b ^ pad for b in key]) + bytes([pad]) * (_BLOCK - len(key)) for pad in (0x36, 0x5C)]


class Sealer:
    """Seals payloads for one device: Sealer(device_id, key).seal(b"...") -> frame bytes.

    `epoch` and `seq` are the numbers the next frame carries. When seq would pass
    frame.MAX_COUNTER the epoch advances and seq restarts at 0, so no (epoch, seq) repeats;
    whoever persists the boot epoch must persist the new value (see firmware).
    Status messages (seal_status) count in `status_seq`, their own sequence per epoch.
    """

    def __init__(self, device_id, key, key_id=0, link="wifi", epoch=0, tag_len=16, compact=False, max_frame=0,
                 cipher=None):
        check_device_id(device_id)
        key = bytes(key)
        if len(key) < MIN_KEY_LEN:
            raise ValueError("key must be at least %d bytes" % MIN_KEY_LEN)
        if link not in LINKS:
            raise ValueError("unknown link %r; known: %s" % (link, ", ".join(sorted(LINKS))))
        if not 0 <= key_id <= 255:
            raise ValueError("key id must be 0..255")
        if not 0 <= epoch <= frame.MAX_COUNTER:
            raise ValueError("epoch must be 0..%d" % frame.MAX_COUNTER)
        frame.tag_code(tag_len)  # raises ValueError for a length other than 8, 16, 32
        self.device_id = device_id
        self.key_id = key_id
        self.link = link
        self.link_code, self.max_payload = LINKS[link]
        self.tag_len = tag_len
        self.compact = compact  # the compact form: no link code, no CRC (agent/frame.py)
        self.max_frame = max_frame  # largest whole frame the link takes (LoRaWAN: its data rate's payload), 0: any
        self.cipher = cipher  # a RecordCipher (agent/cipher.py): records are encrypted, then MACed
        self.epoch = epoch
        self.seq = 0
        self.status_seq = 0
        self._status_epoch = epoch
        # HMAC (RFC 2104) split so that everything depending only on the key is done once:
        # micropython-lib's hmac.new re-pads the key in bytecode on every call. The inner
        # hash starts with the padded key and the MAC prefix (domain, device id) together.
        ipad, self._opad = hmac_pads(key)
        domains = (frame.COMPACT_DOMAIN, frame.COMPACT_STATUS_DOMAIN) if compact else (frame.MAC_DOMAIN,
                                                                                        frame.STATUS_DOMAIN)
        self._inner_start = ipad + frame.mac_prefix(device_id, domains[0])
        self._status_start = ipad + frame.mac_prefix(device_id, domains[1])
        self._starts = None  # (epoch, header start without, with timestamp), see _header_starts

    def _header_starts(self):
        # The header up to the sequence number changes only with the epoch: build it once.
        starts = self._starts
        if starts is None or starts[0] != self.epoch:
            args = (self.key_id, self.link_code, self.epoch, self.tag_len)
            starts = self._starts = (self.epoch, frame.header_start(*args, False, self.compact),
                                     frame.header_start(*args, True, self.compact))
        return starts

    def seal(self, payload, timestamp_ms=None):
        """Return the next frame for payload (bytes) and advance the sequence number."""
        if len(payload) > self.max_payload:
            raise ValueError(
                "payload of %d bytes is over the %s limit of %d" % (len(payload), self.link, self.max_payload)
            )
        if self.seq > frame.MAX_COUNTER:
            if self.epoch >= frame.MAX_COUNTER:
                raise ValueError("epoch and sequence space exhausted: provision a new key id")
            self.epoch += 1
            self.seq = 0
        out = self._seal(payload, self.seq, self._inner_start, timestamp_ms, self.cipher)
        self.seq += 1
        return out

    def seal_status(self, payload):
        """Return the next status frame (birth, death, heartbeat) for payload."""
        if self._status_epoch != self.epoch:
            self._status_epoch = self.epoch
            self.status_seq = 0
        out = self._seal(payload, self.status_seq, self._status_start, None)
        self.status_seq += 1
        return out

    def _seal(self, payload, seq, inner_start, timestamp_ms, cipher=None):
        starts = self._header_starts()
        if timestamp_ms is None:
            out = bytearray(starts[1])
            frame.put_varint(out, seq)
        else:
            if not 0 <= timestamp_ms <= frame.MAX_TIMESTAMP:
                raise ValueError("timestamp_ms must be 0..2**53-1")
            out = bytearray(starts[2])
            frame.put_varint(out, seq)
            frame.put_varint(out, timestamp_ms)
        if cipher:  # status messages never are (cipher None): the hub reads them as they come
            out[0] |= frame.FLAG_ENCRYPTED
            payload = cipher.apply(self.epoch, seq, payload)
        out.extend(payload)
        size = len(out) + self.tag_len + (0 if self.compact else 4)
        if self.max_frame and size > self.max_frame:
            raise ValueError("frame of %d bytes would be over the device's limit of %d" % (size, self.max_frame))
        inner = hashlib.sha256(inner_start)
        inner.update(out)
        outer = hashlib.sha256(self._opad)
        outer.update(inner.digest())
        out.extend(outer.digest()[: self.tag_len])
        if not self.compact:
            out.extend(frame.crc_trailer(out))
        return bytes(out)


def sealer_for(config, epoch, block=None):
    """The Sealer for a device config written by `linkseal keys provision` (device.json), on
    the board and on Linux devices alike. block: the AES block function of a host (shared/aes.py)
    for a device that encrypts; a board's is cryptolib's."""
    key = bytes.fromhex(config["key"])
    cipher = None
    if config.get("encrypt"):
        from .cipher import RecordCipher

        cipher = RecordCipher(key, config["key_id"], block)
    return Sealer(config["device_id"], key, key_id=config["key_id"], link=config["link"], epoch=epoch,
                  tag_len=config["tag_len"], compact=config.get("form") == "compact",
                  max_frame=config.get("max_frame", 0), cipher=cipher)
