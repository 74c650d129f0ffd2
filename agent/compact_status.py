# The compact status encoder (docs/protocol.md "Compact status"): for devices in the compact
# form (LoRaWAN: 51-byte uplinks). A module of its own so that only builds for such devices
# carry it (the firmware's size budget); the fields are agent/status.py's.
from .frame import put_varint
from .status import BIRTH, COMPACT_PREV, COMPACT_SENT, KINDS, RESET_CAUSES


def compact_status_payload(kind, sealer, queued, source_drops, sent=None, reset_cause=None, refused=0, prev=None,
                           too_large=0):
    # type, flags, then varints: next_seq, queued, source_drops, refused, too_large, [sent: 2],
    # [prev: 4], and for a birth one byte of reset cause. 7 bytes for a quiet heartbeat.
    out = bytearray((KINDS.index(kind) + 1, (COMPACT_SENT if sent is not None else 0) |
                     (COMPACT_PREV if prev is not None else 0)))
    for value in (sealer.seq, queued, source_drops, refused, too_large):
        put_varint(out, value)
    for value in (sent or ()):
        put_varint(out, value)
    for value in (prev or ()):
        put_varint(out, value)
    if kind == BIRTH:
        out.append(RESET_CAUSES.index(reset_cause) if reset_cause in RESET_CAUSES else 0)
    return bytes(out)
