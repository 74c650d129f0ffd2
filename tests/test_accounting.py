"""Property tests: the verifier's counters against independent ground truth.

The oracle (simulator/truth.py) uses plain sets; the burst statistics are recomputed by
brute force from the final set of accepted sequence numbers.
"""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from agent import Sealer, topic_for
from hardware.link_registry import links_by_code, load_links
from hub.core.counters import BURSTS, L2R, LOST, R2L
from hub.core.report import build_report
from hub.core.verifier import DeviceKeys, Verifier
from simulator.run import Scenario, generate, label, verify_in_process
from simulator.truth import Ledger, mismatches

from .conftest import KEY

LINKS = ["wifi", "ble", "lora"]


def delivery_plan():
    """A device's frames over up to three epochs, then dropped, duplicated, damaged and shuffled."""
    epoch_sizes = st.lists(st.integers(1, 60), min_size=1, max_size=3)
    return st.tuples(epoch_sizes, st.integers(0, 2**32 - 1), st.floats(0, 0.5), st.floats(0, 0.3),
                     st.floats(0, 0.2), st.integers(0, 40))


@settings(max_examples=150, deadline=None)
@given(plans=st.lists(delivery_plan(), min_size=1, max_size=3))
def test_counters_match_ground_truth(plans):
    names = {code: link.name for code, link in links_by_code().items()}
    devices, traffic = [], []
    for number, (sizes, seed, drop, dup, damage, shuffle) in enumerate(plans):
        rng = random.Random(seed)
        device, link = f"dev-{number}", LINKS[number % len(LINKS)]
        devices.append(DeviceKeys(device, {0: KEY}, link, 16))
        stream = []
        for epoch, size in enumerate(sizes, start=rng.randrange(3)):
            sealer = Sealer(device, KEY, link=link, epoch=epoch)
            stream += [(epoch, i, sealer.seal(bytes([i % 256]))) for i in range(size)]
        out = []
        for epoch, seq, data in stream:
            if rng.random() < drop:
                continue
            for _ in range(2 if rng.random() < dup else 1):
                if rng.random() < damage:
                    bad = bytearray(data)
                    bad[rng.randrange(len(bad))] ^= 1 << rng.randrange(8)
                    out.append((device, link, None, None, bytes(bad)))
                else:
                    out.append((device, link, epoch, seq, data))
        # Local shuffles: each frame moves at most `shuffle` places.
        keyed = sorted(enumerate(out), key=lambda item: item[0] + rng.uniform(0, shuffle))
        traffic += [item for _, item in keyed]
    verifier = Verifier(devices, names)
    ledger = Ledger()
    for device, link, epoch, seq, data in traffic:
        want = (ledger.unauthentic(device, link, "corrupt") if epoch is None
                else ledger.authentic(device, link, epoch, seq))
        assert verifier.verify(topic_for(device), data, 0.0).outcome == want
    report = build_report(verifier)
    assert mismatches(ledger.report(), report) == []
    for entry in list(report["devices"].values()) + list(report["links"].values()):
        assert entry["received"] == sum(entry[k] for k in ("valid", "duplicate", "corrupt", "forged", "replay",
                                                           "malformed", "rate_limited"))


def brute_force_pattern(accepted, base, top):
    """R2L, L2R, bursts and lost for the received/lost pattern over base..top."""
    pattern = [seq in accepted for seq in range(base, top + 1)]
    r2l = sum(1 for a, b in zip(pattern, pattern[1:]) if a and not b)
    l2r = sum(1 for a, b in zip(pattern, pattern[1:]) if not a and b)
    bursts = sum(1 for i, got in enumerate(pattern) if not got and (i == 0 or pattern[i - 1]))
    return r2l, l2r, bursts, pattern.count(False)


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(1, 300), keep=st.floats(0.05, 1.0),
       spread=st.integers(0, 400), new_epoch=st.booleans())
def test_burst_statistics_equal_brute_force(seed, count, keep, spread, new_epoch):
    rng = random.Random(seed)
    verifier = Verifier([DeviceKeys("d", {0: KEY}, "wifi", 16)], {4: "wifi"})
    topic = topic_for("d")
    if new_epoch:  # seen from an earlier epoch, so this one counts from seq 0
        verifier.verify(topic, Sealer("d", KEY, epoch=0).seal(b""), 0.0)
    sealer = Sealer("d", KEY, epoch=1)
    frames = [(i, sealer.seal(b"")) for i in range(count)]
    kept = [f for f in frames if rng.random() < keep] or frames[:1]
    arrival = sorted(kept, key=lambda f: f[0] + rng.uniform(0, spread))
    accepted = set()
    for seq, data in arrival:
        if verifier.verify(topic, data, 0.0).outcome == "valid":
            accepted.add(seq)
    window = verifier._devices[topic].current
    base = 0 if new_epoch else min(accepted)
    device = verifier._devices[topic].counters  # the first epoch (one frame) adds nothing
    got = (device[R2L], device[L2R], device[BURSTS], device[LOST])
    assert got == brute_force_pattern(accepted, base, window.top)
    link = verifier.link_counters[4]
    assert (link[R2L], link[L2R], link[BURSTS], link[LOST]) == got


def test_simulated_runs_match_ground_truth_across_seeds_and_stress():
    stressed = {"loss": "bernoulli", "loss_rate": 0.2, "burst_rate": 0.05, "duplicate": 0.05, "jitter_ms": 400.0}
    for seed, profiles in ((1, {}), (2, {link: stressed for link in ("wifi", "ble", "lora", "fiber")})):
        generated = generate(Scenario(devices=16, links=tuple(load_links()), duration=260, rate=5, seed=seed,
                                      profiles=profiles))
        labelled, ledger = label(generated.events, generated.device_links)
        report, outcomes = verify_in_process(generated.devices, labelled)
        assert [o for o, (*_, want) in zip(outcomes, labelled) if o != want] == []
        assert mismatches(ledger.report(), report) == []
        assert sum(link["lost"] for link in report["links"].values()) > 0
        assert {e["kind"] for e in report["events"]} == {"forged", "replay", "unknown_device"}
