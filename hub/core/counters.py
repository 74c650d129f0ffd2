"""Counter slots shared by the verifier, the window, storage and the report.

Each device and each link keeps one array('q') indexed by these constants: arrays of
machine integers cost a fraction of a dict, which matters at 100k devices.
"""

from array import array

# Stored slots, in array order; storage uses these names too. `received` is not stored:
# it is the sum of the per-frame outcomes.
SLOT_NAMES = ("valid", "lost", "duplicate", "reordered", "corrupt", "forged", "replay", "malformed",
              "rate_limited", "r2l", "l2r", "bursts", "source_drops", "redelivered", "lost_on_device",
              "unsure_on_device", "lost_unknown", "unencrypted", "epoch_reuse")
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
# Records a reset destroyed on the device (its RAM queue at a power cut), written off when its
# next birth says how far the epoch got (docs/protocol.md, "Records destroyed on the device"):
# counted in `lost` too, and taken out of it by the report like source drops. UNSURE: positions
# that may or may not have been sealed before the reset (the device persists a bound, not each
# seq). LOST_UNKNOWN: positions before the first frame seen of an epoch whose start the hub did
# not see (no birth, device not tracked yet): never counted as lost, since nothing says they
# were sent to this hub.
LOST_ON_DEVICE, UNSURE_ON_DEVICE, LOST_UNKNOWN = range(14, 17)
# UNENCRYPTED: authentic records in clear from a device provisioned to encrypt, or on a link
# whose policy requires encryption ([policy] require_encryption): refused, never stored or
# forwarded, and their positions count as received (a policy refusal is not link loss).
# EPOCH_REUSE: births announcing an epoch at or below one already born (a device restored from
# an image or cloned: its counters, and with encryption its keystream, repeat).
UNENCRYPTED, EPOCH_REUSE = range(17, 19)
SLOTS = len(SLOT_NAMES)

# Links keep more than devices: the loss sequence's moments, tallied once per sequence
# position when it leaves the replay window (its fate is then final), in PATTERN_GROUPS
# groups. A run of PATTERN_BATCH positions of one epoch goes to one group, the next run to
# the next group, so each group is a sample of the link spread over time. Interval widths
# and the Gilbert-Elliott fit come from the spread between groups (hub.core.loss_model).
PATTERN_GROUPS = 8
PATTERN_BATCH = 256
PATTERN_STATS = ("positions", "lost", "lost_pairs", "lost_lag2", "lost_triples")
PATTERN_SLOTS = len(PATTERN_STATS)
PATTERN_NAMES = tuple(f"pattern{g}_{stat}" for g in range(PATTERN_GROUPS) for stat in PATTERN_STATS)
LINK_SLOT_NAMES = SLOT_NAMES + PATTERN_NAMES
LINK_SLOTS = len(LINK_SLOT_NAMES)

# Exactly one of these per frame from a known device.
PER_FRAME = (VALID, DUPLICATE, CORRUPT, FORGED, REPLAY, MALFORMED, RATE_LIMITED, UNENCRYPTED)
OUTCOME_OF = {slot: SLOT_NAMES[slot] for slot in PER_FRAME}

# What the report shows for each device and link, in this order.
REPORTED = ("received", "valid", "lost", "duplicate", "reordered", "corrupt", "forged", "replay", "malformed",
            "rate_limited", "source_drops", "redelivered", "lost_on_device", "lost_unknown", "unencrypted",
            "epoch_reuse")


_ZEROS = array("q", [0]) * SLOTS
_LINK_ZEROS = array("q", [0]) * LINK_SLOTS


def counters_from(data: bytes, slots: int = SLOTS) -> array:
    """A counter array from stored bytes; arrays stored before a slot was added get it as 0.
    A link's array ends with its pattern slots: those stay in place after the slots added."""
    stored = array("q")
    stored.frombytes(data)
    if slots == SLOTS:
        counters = new_counters()
        counters[: len(stored)] = stored
        return counters
    counters = new_link_counters()
    kept = len(stored) - len(PATTERN_NAMES)  # the slots of the format it was stored in
    if kept < 0:  # stored before links kept patterns
        counters[: len(stored)] = stored
    else:
        counters[:kept] = stored[:kept]
        counters[SLOTS:] = stored[kept:]
    return counters


def new_counters() -> array:
    return array("q", _ZEROS)  # copying an array allocates exactly; array("q", bytes) over-allocates


def new_link_counters() -> array:
    return array("q", _LINK_ZEROS)


def pattern_group(counters, group: int) -> array:
    """One group's PATTERN_STATS of a link's counter array."""
    start = SLOTS + group * PATTERN_SLOTS
    return counters[start : start + PATTERN_SLOTS]


def received(counters) -> int:
    return sum(counters[slot] for slot in PER_FRAME)


def as_dict(counters) -> dict:
    """The REPORTED counters of one array, by name."""
    out = {"received": received(counters)}
    for name in REPORTED[1:]:
        out[name] = int(counters[SLOT_NAMES.index(name)])
    return out
