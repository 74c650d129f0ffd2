"""Fault-model throughput: fates per second for a busy profile (target >= 200k frames/s),
and the whole in-process pipeline (models, ground truth, hub core) for context."""

import json
import random
import time

from hardware.link_registry import load_links
from simulator.faults import model_for
from simulator.run import Scenario, generate, label, verify_in_process

FRAMES = 300_000


def main():
    # WiFi with raw bit errors on top of its registry figures: every stage of the model does work.
    model = model_for(load_links()["wifi"], {"ber": 1e-5})
    rng = random.Random(1)
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for i in range(FRAMES):
            model.fate(rng, i * 0.01, 64)
        best = max(best, FRAMES / (time.perf_counter() - start))
    print(json.dumps({"figure": "fault_model_frames_per_s", "value": round(best), "target": ">= 200000",
                      "profile": "wifi + ber 1e-5, 64-byte frames"}))
    start = time.perf_counter()
    generated = generate(Scenario(devices=12, duration=1000, rate=5, seed=1))
    labelled, _ = label(generated.events, generated.device_links)
    verify_in_process(generated.devices, labelled)
    elapsed = time.perf_counter() - start
    print(json.dumps({"figure": "sim_no_broker_frames_per_s", "value": round(len(labelled) / elapsed),
                      "note": "seal + fault models + ground truth + hub core, 12 devices, 60k frames"}))


if __name__ == "__main__":
    main()
