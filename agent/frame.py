# Wire format v1: the one encoder and decoder of linkseal frames.
# Runs unchanged on MicroPython and CPython; docs/protocol.md is the normative text.
#
#   byte 0      E (bit 7: payload encrypted, agent/cipher.py) | version (bits 4-6, 1)
#               | C (bit 3: compact form) | T (bit 2: timestamp present) | tag code (bits 0-1)
#   byte 1      key id
#   byte 2      link code (hardware/links); not in the compact form
#   varint      boot epoch
#   varint      sequence number within the epoch
#   varint      device time in ms since 1970 (only when T is set)
#   ...         payload
#   tag         HMAC-SHA256(key, domain | len(device id) | device id | all bytes above)[:tag length]
#   4 bytes     CRC-32 (IEEE 802.3, big-endian) of every byte before it; not in the compact form
#
# The compact form is for links whose own integrity check drops every damaged frame before
# it reaches the hub (hardware/links: compact_frames, LoRaWAN's MIC): no CRC, no link code
# (the device's link is its own), and MAC domains of its own, so that neither form can be
# turned into the other. A device uses one form only; the hub knows which from its key file.
import binascii
import struct

VERSION = 1
MAC_DOMAIN = b"linkseal/v1 frame\x00"
# Status messages (birth, death, heartbeat) are sealed the same way under their own domain,
# with their own sequence numbers: no status message can pass for a record, or the reverse.
STATUS_DOMAIN = b"linkseal/v1 status\x00"
COMPACT_DOMAIN = b"linkseal/v1 compact frame\x00"
COMPACT_STATUS_DOMAIN = b"linkseal/v1 compact status\x00"
TAG_LENGTHS = (8, 16, 32)  # index = tag code
FLAG_TIMESTAMP = 0x04
FLAG_COMPACT = 0x08
# A hub that predates encryption reads E as version 9 and refuses the frame as malformed: it
# can never pass ciphertext on as if it were the record.
FLAG_ENCRYPTED = 0x80
CRC_LEN = 4
FIXED_HEADER_LEN = 3
MAX_COUNTER = 0xFFFFFFFF  # epoch and seq are unsigned 32-bit
MAX_TIMESTAMP = (1 << 53) - 1
# The most a frame can add to its payload: fixed header, two 5-byte varints,
# an 8-byte timestamp varint, a 32-byte tag and the CRC.
MAX_OVERHEAD = FIXED_HEADER_LEN + 5 + 5 + 8 + 32 + CRC_LEN
# The shortest frame with a valid structure: 3 + 1 + 1 header bytes, 8-byte tag, CRC.
MIN_FRAME_LEN = FIXED_HEADER_LEN + 2 + 8 + CRC_LEN


class CorruptFrame(ValueError):
    """The CRC-32 does not match, or the frame is too short to carry one: link damage."""


class MalformedFrame(ValueError):
    """CRC intact but the bytes do not follow the v1 structure."""


# binascii.crc32 returns the unsigned CRC on CPython 3 and on MicroPython alike.
crc32 = binascii.crc32


def crc_trailer(data):
    """The 4 bytes that end a frame: CRC-32 of everything before it, big-endian."""
    return struct.pack(">I", crc32(data))


def put_varint(out, value):
    # Unsigned LEB128: 7 bits a byte, low bits first, high bit set on all but the last.
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def get_varint(buf, pos, end, limit):
    # Returns (value, next position). Only the shortest encoding is accepted, so each
    # number has exactly one byte string and a frame cannot be re-encoded under one MAC.
    value = 0
    shift = 0
    while pos < end:
        b = buf[pos]
        pos += 1
        if b < 0x80:
            value |= b << shift
            if (b == 0 and shift) or value > limit:
                raise MalformedFrame("varint not in shortest form or over its field's limit")
            return value, pos
        value |= (b & 0x7F) << shift
        shift += 7
        if shift > 56:
            raise MalformedFrame("varint too long")
    raise MalformedFrame("varint runs past the header")


def tag_code(tag_len):
    for code in range(len(TAG_LENGTHS)):
        if TAG_LENGTHS[code] == tag_len:
            return code
    raise ValueError("tag length must be 8, 16 or 32 bytes, not %r" % (tag_len,))


def header_start(key_id, link_code, epoch, tag_len, with_timestamp, compact=False):
    """The header up to the sequence number: the same for every frame of an epoch."""
    first = (VERSION << 4) | tag_code(tag_len)
    if with_timestamp:
        first |= FLAG_TIMESTAMP
    if compact:
        out = bytearray((first | FLAG_COMPACT, key_id))
    else:
        out = bytearray((first, key_id, link_code))
    put_varint(out, epoch)
    return bytes(out)


def mac_prefix(device_id, domain=MAC_DOMAIN):
    """The bytes the MAC covers before the frame: domain constant and the device id.

    The device id is length-prefixed so that no (id, header) pair can be read as another.
    """
    raw = device_id.encode() if isinstance(device_id, str) else bytes(device_id)
    return domain + bytes((len(raw),)) + raw


def decode(frame):
    """Check the CRC, then split a frame of the full form.

    Returns (key_id, link_code, epoch, seq, timestamp_ms or None, payload_start, tag_start, tag_len);
    the payload is frame[payload_start:tag_start], the tag frame[tag_start:tag_start + tag_len].
    Raises CorruptFrame when the CRC fails and MalformedFrame when the structure is not v1.
    The MAC is not checked here: that needs the device key (hub/core/verifier.py).
    """
    end = len(frame) - CRC_LEN
    if end < 0 or crc32(frame[:end]) != struct.unpack(">I", frame[end:])[0]:
        raise CorruptFrame("CRC-32 mismatch" if end >= 0 else "shorter than a CRC")
    if end < FIXED_HEADER_LEN:
        raise MalformedFrame("frame too short for a header")
    if frame[0] & FLAG_COMPACT:
        raise MalformedFrame("compact form from a device of the full form")
    return _split(frame, end, FIXED_HEADER_LEN, frame[2])


def decode_compact(frame):
    """Split a frame of the compact form (no CRC to check: the link dropped damaged frames).
    Returns what decode() does, with None for the link code (the device's own)."""
    if len(frame) < 2:
        raise MalformedFrame("frame too short for a header")
    if not frame[0] & FLAG_COMPACT:
        raise MalformedFrame("full form from a device of the compact form")
    return _split(frame, len(frame), 2, None)


def position(frame):
    """(epoch, seq) of a frame of either form: the device's view of its own queued frames."""
    return (decode_compact if frame[0] & FLAG_COMPACT else decode)(frame)[2:4]


def _split(frame, end, header_len, link_code):
    first = frame[0]
    if (first >> 4) & 7 != VERSION:
        raise MalformedFrame("unsupported format version %d" % ((first >> 4) & 7))
    code = first & 0x03
    if code >= len(TAG_LENGTHS):
        raise MalformedFrame("reserved tag length code")
    tag_len = TAG_LENGTHS[code]
    tag_start = end - tag_len
    if tag_start <= header_len + 1:
        raise MalformedFrame("frame too short for its %d-byte tag" % tag_len)
    epoch = frame[header_len]
    if epoch < 0x80:  # the common one-byte epoch, without the loop
        pos = header_len + 1
    else:
        epoch, pos = get_varint(frame, header_len, tag_start, MAX_COUNTER)
    seq, pos = get_varint(frame, pos, tag_start, MAX_COUNTER)
    timestamp = None
    if first & FLAG_TIMESTAMP:
        timestamp, pos = get_varint(frame, pos, tag_start, MAX_TIMESTAMP)
    return frame[1], link_code, epoch, seq, timestamp, pos, tag_start, tag_len
