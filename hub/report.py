"""The per-link / per-device report: one schema for `hub verify`, `hub report` and the simulator.

{"links": {LINK: ENTRY}, "devices": {DEVICE_ID: ENTRY + {"link": LINK}},
 "unknown_device": N, "events": [{"t", "device", "link", "kind", "reason"}]}
ENTRY holds the integer counters of hub.counters.REPORTED and the figures below.
"""

import json
import math

from .counters import BURSTS, L2R, LOST, R2L, VALID, as_dict

_Z95 = 1.959963984540054


def wilson_interval(successes: int, trials: int, z: float = _Z95) -> list:
    """Wilson score interval for a binomial proportion; [0, 1] when there are no trials."""
    if trials <= 0:
        return [0.0, 1.0]
    phat = successes / trials
    denom = 1 + z * z / trials
    centre = (phat + z * z / (2 * trials)) / denom
    half = z * math.sqrt(phat * (1 - phat) / trials + z * z / (4 * trials * trials)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def entry(counters) -> dict:
    """Report entry for one counter array (a device or a link)."""
    out = as_dict(counters)
    lost, valid = out["lost"], out["valid"]
    expected = valid + lost  # RFC 3550: expected = received (unique) + lost
    out["loss_rate"] = _ratio(lost, expected)
    out["loss_rate_ci"] = wilson_interval(lost, expected)
    out["corrupt_rate"] = _ratio(out["corrupt"], out["received"])
    out["corrupt_rate_ci"] = wilson_interval(out["corrupt"], out["received"])
    # Gilbert-Elliott estimates from transition counts: p = P(lost | previous received),
    # r = P(received | previous lost); mean burst length = lost / loss runs.
    out["burst_mean"] = _ratio(lost, counters[BURSTS])
    out["ge_p"] = _ratio(counters[R2L], counters[VALID])
    out["ge_r"] = _ratio(counters[L2R], counters[LOST])
    return out


def build_report(verifier) -> dict:
    return {
        "links": {name: entry(counters) for name, counters in verifier.links()},
        "devices": {device: {**entry(counters), "link": link} for device, link, counters in verifier.devices()},
        "unknown_device": verifier.unknown_device,
        "events": list(verifier.events),
    }


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2, sort_keys=True)
