"""The loss interval's coverage and the Gilbert-Elliott fit's accuracy (hub.core.loss_model).

interval_coverage_min: for every link profile of hardware/links and for the netem profiles
with hidden states (tools/loss_sequences.py), 200 seeds of netem's loss generator run through
the hub's replay window and report; coverage is the share of seeds whose 95% interval holds
the model's loss probability (target >= 0.92, two standard errors below 0.95). Each seed has
20k frames, or as many as 20 loss bursts take where that is more: with a handful of bursts
no interval can know how bursty the link is (see docs/protocol.md).

ge_fit_error: the worst relative error of the fitted p and r over the bursty profiles, 5
seeds of 100k frames each (target <= 0.15), the worst 1-h error (target <= 0.05), and the
time of window + report per 100k frames (the fit itself reads a few dozen counters).
"""

import json
import time
from multiprocessing import Pool

from hardware.link_registry import load_links
from tools.loss_sequences import HIDDEN_STATE_PROFILES, hub_link_entry, netem_gemodel, stationary_loss

SEEDS = 200
MIN_FRAMES = 20_000
BURSTS_PER_SEED = 20
FIT_FRAMES = 100_000
FIT_SEEDS = 5


def _profiles() -> dict:
    profiles = {f"netem {name}": profile for name, profile in HIDDEN_STATE_PROFILES.items()}
    for name, link in load_links().items():
        profiles[name] = (link.burst.p, link.burst.r, link.burst.one_minus_h, link.burst.one_minus_k)
    return profiles


def _frames(profile) -> int:
    p, r = profile[0], profile[1]
    bursts_per_frame = p * r / (p + r)  # entries into the bad state
    return max(MIN_FRAMES, round(BURSTS_PER_SEED / bursts_per_frame))


def _covered(job) -> int:
    profile, frames, seed = job
    low, high = hub_link_entry(netem_gemodel(*profile, frames, seed))["loss_rate_ci"]
    return int(low <= stationary_loss(*profile) <= high)


def coverage() -> None:
    results = {}
    with Pool(2) as pool:
        for name, profile in _profiles().items():
            frames = _frames(profile)
            hits = sum(pool.map(_covered, [(profile, frames, 90_000 + s) for s in range(SEEDS)], chunksize=10))
            results[name] = {"coverage": hits / SEEDS, "frames_per_seed": frames}
    print(json.dumps({"figure": "interval_coverage_min", "value": min(r["coverage"] for r in results.values()),
                      "target": ">= 0.92", "seeds": SEEDS, "profiles": results}))


def fit_error() -> None:
    worst_pr = worst_h = 0.0
    elapsed, fits = 0.0, {}
    bursty = dict({f"netem {n}": p for n, p in HIDDEN_STATE_PROFILES.items()}, lora=_profiles()["lora"])
    for name, (p, r, loss_bad, loss_good) in bursty.items():
        errors = []
        for seed in range(FIT_SEEDS):
            lost = netem_gemodel(p, r, loss_bad, loss_good, FIT_FRAMES, 70_000 + seed)
            start = time.perf_counter()
            fit = hub_link_entry(lost)["ge_fit"]
            elapsed += time.perf_counter() - start
            if fit is None:
                errors.append(float("inf"))
                continue
            errors.append(max(abs(fit["p"] / p - 1), abs(fit["r"] / r - 1)))
            worst_h = max(worst_h, abs(fit["loss_in_bad"] - loss_bad))
        fits[name] = round(max(errors), 3)
        worst_pr = max(worst_pr, max(errors))
    print(json.dumps({"figure": "ge_fit_error", "value": round(worst_pr, 3), "target": "<= 0.15",
                      "one_minus_h_error": round(worst_h, 3), "one_minus_h_target": "<= 0.05",
                      "by_profile": fits, "seeds": FIT_SEEDS, "frames": FIT_FRAMES,
                      "window_and_report_s_per_100k_frames": round(elapsed / (len(bursty) * FIT_SEEDS), 3)}))


def main():
    coverage()
    fit_error()


if __name__ == "__main__":
    main()
