"""Counter slots shared by the verifier, the window, storage and the report.

Each device and each link keeps one array('q') indexed by these constants: arrays of
machine integers cost a fraction of a dict, which matters at 100k devices.
"""

from array import array

# Stored slots, in array order; storage uses these names too. `received` is not stored:
# it is the sum of the per-frame outcomes.
SLOT_NAMES = ("valid", "lost", "duplicate", "reordered", "corrupt", "forged", "replay", "malformed",
              "rate_limited", "r2l", "l2r", "bursts", "source_drops", "redelivered")
(VALID, LOST, DUPLICATE, REORDERED, CORRUPT, FORGED, REPLAY, MALFORMED, RATE_LIMITED) = range(9)
# Loss-pattern tallies for Gilbert-Elliott estimates: transitions received->lost and
# lost->received between consecutive sequence numbers, and the number of loss runs.
R2L, L2R, BURSTS = range(9, 12)
# Records a device dropped itself (queue full), from its status messages: they leave gaps in
# the sequence like link losses do, so the report takes them out of `lost`.
SOURCE_DROPS = 12
# Frames the broker delivered again (MQTT DUP flag: after the hub's own restart or an ack
# timeout): a copy of a frame already accepted, or one that came after newer frames only
# because it was redelivered. The hub's doing, not the link's: never duplicate or reordered,
# and a redelivered copy is not counted as received.
REDELIVERED = 13
SLOTS = len(SLOT_NAMES)

# Exactly one of these per frame from a known device.
PER_FRAME = (VALID, DUPLICATE, CORRUPT, FORGED, REPLAY, MALFORMED, RATE_LIMITED)
OUTCOME_OF = {slot: SLOT_NAMES[slot] for slot in PER_FRAME}

# What the report shows for each device and link, in this order.
REPORTED = ("received", "valid", "lost", "duplicate", "reordered", "corrupt", "forged", "replay", "malformed",
            "rate_limited", "source_drops", "redelivered")


_ZEROS = array("q", [0]) * SLOTS


def counters_from(data: bytes) -> array:
    """A counter array from stored bytes; arrays stored before a slot was added get it as 0."""
    counters = new_counters()
    stored = array("q")
    stored.frombytes(data)
    counters[: len(stored)] = stored
    return counters


def new_counters() -> array:
    return array("q", _ZEROS)  # copying an array allocates exactly; array("q", bytes) over-allocates


def received(counters) -> int:
    return sum(counters[slot] for slot in PER_FRAME)


def as_dict(counters) -> dict:
    """The REPORTED counters of one array, by name."""
    out = {"received": received(counters)}
    for name in REPORTED[1:]:
        out[name] = int(counters[SLOT_NAMES.index(name)])
    return out
