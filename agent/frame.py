# Wire format v1: the one encoder and decoder of linkseal frames.
# Runs unchanged on MicroPython and CPython; docs/protocol.md is the normative text.
#
#   byte 0      version (high nibble, 1) | T (bit 2: timestamp present) | tag code (bits 0-1)
#   byte 1      key id
#   byte 2      link code (hardware/links)
#   varint      boot epoch
#   varint      sequence number within the epoch
#   varint      device time in ms since 1970 (only when T is set)
#   ...         payload
#   tag         HMAC-SHA256(key, MAC_DOMAIN | len(device id) | device id | all bytes above)[:tag length]
#   4 bytes     CRC-32 (IEEE 802.3, big-endian) of every byte before it
import binascii
import struct

VERSION = 1
MAC_DOMAIN = b"linkseal/v1 frame\x00"
# Status messages (birth, death, heartbeat) are sealed the same way under their own domain,
# with their own sequence numbers: no status message can pass for a record, or the reverse.
STATUS_DOMAIN = b"linkseal/v1 status\x00"
TAG_LENGTHS = (8, 16, 32)  # index = tag code
FLAG_TIMESTAMP = 0x04
FLAGS_RESERVED = 0x08
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


def header_start(key_id, link_code, epoch, tag_len, with_timestamp):
    """The header up to the sequence number: the same for every frame of an epoch."""
    first = (VERSION << 4) | tag_code(tag_len)
    if with_timestamp:
        first |= FLAG_TIMESTAMP
    out = bytearray((first, key_id, link_code))
    put_varint(out, epoch)
    return bytes(out)


def encode_header(key_id, link_code, epoch, seq, tag_len, timestamp_ms=None):
    """The header bytes (everything before the payload) as a bytearray."""
    out = bytearray(header_start(key_id, link_code, epoch, tag_len, timestamp_ms is not None))
    put_varint(out, seq)
    if timestamp_ms is not None:
        put_varint(out, timestamp_ms)
    return out


def mac_prefix(device_id, domain=MAC_DOMAIN):
    """The bytes the MAC covers before the frame: domain constant and the device id.

    The device id is length-prefixed so that no (id, header) pair can be read as another.
    """
    raw = device_id.encode() if isinstance(device_id, str) else bytes(device_id)
    return domain + bytes((len(raw),)) + raw


def decode(frame):
    """Check the CRC, then split the frame.

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
    first = frame[0]
    if first >> 4 != VERSION:
        raise MalformedFrame("unsupported format version %d" % (first >> 4))
    if first & FLAGS_RESERVED:
        raise MalformedFrame("reserved flag bit set")
    code = first & 0x03
    if code >= len(TAG_LENGTHS):
        raise MalformedFrame("reserved tag length code")
    tag_len = TAG_LENGTHS[code]
    tag_start = end - tag_len
    if tag_start <= FIXED_HEADER_LEN + 1:
        raise MalformedFrame("frame too short for its %d-byte tag" % tag_len)
    epoch = frame[FIXED_HEADER_LEN]
    if epoch < 0x80:  # the common one-byte epoch, without the loop
        pos = FIXED_HEADER_LEN + 1
    else:
        epoch, pos = get_varint(frame, FIXED_HEADER_LEN, tag_start, MAX_COUNTER)
    seq, pos = get_varint(frame, pos, tag_start, MAX_COUNTER)
    timestamp = None
    if first & FLAG_TIMESTAMP:
        timestamp, pos = get_varint(frame, pos, tag_start, MAX_TIMESTAMP)
    return frame[1], frame[2], epoch, seq, timestamp, pos, tag_start, tag_len
