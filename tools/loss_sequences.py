"""Loss sequences with a known truth, and the hub's figures for them (tests and bench).

`netem_gemodel` is written from the Linux kernel's net/sched/sch_netem.c (loss_gilb_ell),
independently of simulator/faults.py, so the hub's fit is checked against netem itself:

    case GOOD_STATE: if (rnd < a1) state = BAD_STATE;  if (rnd < a4) return true;
    case BAD_STATE:  if (rnd < a2) state = GOOD_STATE; if (rnd > a3) return true;

with a1 = p, a2 = r, a3 = h, a4 = 1-k: the transition is drawn first, and the frame is lost
with the loss probability of the state it found.
"""

import random

from hub.core.counters import new_counters, new_link_counters
from hub.core.report import link_entry
from hub.core.window import EpochWindow

# Bursty netem profiles with hidden states (1-h < 1, 1-k > 0): (p, r, 1-h, 1-k).
HIDDEN_STATE_PROFILES = {
    "long-bursts": (0.01, 0.1, 0.8, 0.001),
    "dense-bursts": (0.05, 0.2, 0.7, 0.01),
    "leaky-good": (0.02, 0.25, 0.9, 0.005),
}


def netem_gemodel(p: float, r: float, one_minus_h: float, one_minus_k: float, frames: int, seed: int) -> bytearray:
    """1 for each lost frame, 0 for each delivered one, from a good start as netem begins."""
    rng = random.Random(seed)
    h = 1.0 - one_minus_h
    bad = False
    lost = bytearray(frames)
    for i in range(frames):
        if not bad:
            if rng.random() < p:
                bad = True
            lost[i] = rng.random() < one_minus_k
        else:
            if rng.random() < r:
                bad = False
            lost[i] = rng.random() > h
    return lost


def stationary_loss(p: float, r: float, one_minus_h: float, one_minus_k: float) -> float:
    bad = p / (p + r)
    return bad * one_minus_h + (1 - bad) * one_minus_k


def hub_link_entry(lost: bytes, epoch: int = 1) -> dict:
    """The hub's report entry for a link that carried one device's frames 0..len-1 in order,
    with the frames marked 1 in `lost` missing: the replay window and the report, as the hub
    runs them."""
    window = EpochWindow(epoch, 0)
    device, links = new_counters(), {0: new_link_counters()}
    link, accept = links[0], window.accept
    for seq, gone in enumerate(lost):
        if not gone:
            slot = accept(seq, 0, device, links)  # the verifier counts the frame's outcome
            device[slot] += 1
            link[slot] += 1
    return link_entry(link)
