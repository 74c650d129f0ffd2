"""Counter slots shared by the verifier, the window and the report.

Each device and each link keeps one array('q') indexed by these constants: arrays of
machine integers cost a fraction of a dict, which matters at 100k devices.
"""

from array import array

# What the report shows for each device and link, in this order.
REPORTED = ("received", "valid", "lost", "duplicate", "reordered", "corrupt", "forged", "replay", "malformed")

# Stored slots. `received` is not stored: it is the sum of the per-frame outcomes.
(VALID, LOST, DUPLICATE, REORDERED, CORRUPT, FORGED, REPLAY, MALFORMED) = range(8)
# Loss-pattern tallies for Gilbert-Elliott estimates: transitions received->lost and
# lost->received between consecutive sequence numbers, and the number of loss runs.
R2L, L2R, BURSTS = range(8, 11)
SLOTS = 11
PER_FRAME = (VALID, DUPLICATE, CORRUPT, FORGED, REPLAY, MALFORMED)  # exactly one per known-device frame
# The outcome name for a per-frame slot.
OUTCOME_OF = {VALID: "valid", DUPLICATE: "duplicate", CORRUPT: "corrupt", FORGED: "forged",
              REPLAY: "replay", MALFORMED: "malformed"}


def new_counters() -> array:
    return array("q", bytes(8 * SLOTS))


def received(counters) -> int:
    return sum(counters[slot] for slot in PER_FRAME)


_SLOT_OF = {"valid": VALID, "lost": LOST, "duplicate": DUPLICATE, "reordered": REORDERED, "corrupt": CORRUPT,
            "forged": FORGED, "replay": REPLAY, "malformed": MALFORMED}


def as_dict(counters) -> dict:
    """The REPORTED counters of one array, by name."""
    out = {"received": received(counters)}
    for name in REPORTED[1:]:
        out[name] = int(counters[_SLOT_OF[name]])
    return out
