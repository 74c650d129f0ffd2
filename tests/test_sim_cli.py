"""`linkseal sim ...` as users run it: in-process, embedded broker, Mosquitto; record and replay."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from simulator.trace import read_trace
from tools.services import Mosquitto

LINKSEAL = Path(sys.executable).parent / "linkseal"


def run(*args):
    return subprocess.run([str(LINKSEAL), *map(str, args)], capture_output=True, text=True, timeout=300)


def test_run_replay_is_bit_identical(tmp_path):
    first = run("sim", "run", "--no-broker", "--devices", "6", "--links", "wifi,lora,fiber", "--duration", "250",
                "--rate", "5", "--seed", "7", "--out", tmp_path / "a")
    assert first.returncode == 0, first.stderr
    assert "Injected vs measured" in first.stdout and "Attacks accepted: 0" in first.stdout
    assert all(len(line) <= 80 for line in first.stdout.splitlines())
    produced = {p.name for p in (tmp_path / "a").iterdir()}
    assert {"report.json", "capture.jsonl", "trace.jsonl", "wifi.png", "lora.png", "fiber.png"} <= produced
    assert (tmp_path / "a" / "wifi.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = run("sim", "replay", tmp_path / "a" / "trace.jsonl", "--no-broker", "--out", tmp_path / "b")
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "a" / "capture.jsonl").read_bytes() == (tmp_path / "b" / "capture.jsonl").read_bytes()
    reports = [json.loads((tmp_path / d / "report.json").read_text())["hub"] for d in ("a", "b")]
    assert reports[0] == reports[1]
    # The capture is what `hub verify` reads: a user can check the run with the hub's own tool.
    comparison = json.loads((tmp_path / "a" / "report.json").read_text())["comparison"]
    assert comparison["counters_match_truth"] and comparison["outcomes_match_truth"]


def test_two_replays_through_a_broker_give_identical_reports(tmp_path):
    """Through the embedded broker the hub stamps each message with its time in the trace, not
    the wall clock of the replay: the reports agree, event times included."""
    recorded = run("sim", "record", "--devices", "3", "--duration", "10", "--seed", "4",
                   "--attacks", "forge=2,replay_recent=2,unknown_device=1", "--out", tmp_path / "t.jsonl")
    assert recorded.returncode == 0, recorded.stderr
    for out in ("a", "b"):
        replayed = run("sim", "replay", tmp_path / "t.jsonl", "--out", tmp_path / out)
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    first, second = (json.loads((tmp_path / d / "report.json").read_text())["hub"] for d in ("a", "b"))
    assert first["events"] and first == second
    _, events = read_trace(tmp_path / "t.jsonl")
    assert {e["t"] for e in first["events"]} <= {round(e.t, 6) for e in events} | {
        round(e.t + d, 6) for e in events if hasattr(e, "fate") for d in e.fate.delays}


def test_record_from_a_loss_pattern_then_replay(tmp_path):
    pattern = tmp_path / "field.txt"
    pattern.write_text("1111011100" * 30)
    recorded = run("sim", "record", "--loss-pattern", pattern, "--links", "lora", "--seed", "3", "--out",
                   tmp_path / "field.trace.jsonl")
    assert recorded.returncode == 0 and "300 frames, 0 attacks" in recorded.stdout
    header, events = read_trace(tmp_path / "field.trace.jsonl")
    span = max(e.t for e in events) - min(e.t for e in events)
    assert header["duration"] == 300 / header["rate"] and header["duration"] - 1 / header["rate"] <= span
    replayed = run("sim", "replay", tmp_path / "field.trace.jsonl", "--no-broker", "--out", tmp_path / "r")
    assert replayed.returncode == 0, replayed.stderr
    lora = json.loads((tmp_path / "r" / "report.json").read_text())["hub"]["links"]["lora"]
    assert (lora["valid"], lora["lost"]) == (210, 88)  # 90 zeros; the last two are at the tail, never revealed
    # The comparison's truth is the pattern (90 of 300 lost), not the lora profile.
    comparison = json.loads((tmp_path / "r" / "report.json").read_text())["comparison"]["links"]["lora"]["loss"]
    assert comparison["configured"] == pytest.approx(0.3) and comparison["inside"]
    bad = tmp_path / "bad.txt"
    bad.write_text("10?1")
    failed = run("sim", "record", "--loss-pattern", bad, "--links", "lora", "--out", tmp_path / "x.jsonl")
    assert failed.returncode == 2 and "line 1, column 3" in failed.stderr and "Traceback" not in failed.stderr
    (tmp_path / "empty.txt").write_text("\n")
    empty = run("sim", "record", "--loss-pattern", tmp_path / "empty.txt", "--links", "lora", "--out", tmp_path / "e")
    assert empty.returncode == 2 and "no frames" in empty.stderr and not (tmp_path / "e").exists()
    several = run("sim", "record", "--loss-pattern", pattern, "--links", "lora,wifi", "--out", tmp_path / "s")
    assert several.returncode == 2 and "one link" in several.stderr


def test_run_through_the_embedded_broker(tmp_path):
    result = run("sim", "run", "--devices", "6", "--duration", "40", "--rate", "5", "--seed", "5",
                 "--attacks", "tamper=2,cross_device=2,unknown_device=2,flood=20", "--out", tmp_path / "o")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["comparison"]["counters_match_truth"]
    assert report["hub"]["unknown_device"] == 22
    assert (tmp_path / "o" / "hub.db").exists()


def test_run_through_mosquitto(tmp_path):
    broker_dir = tmp_path / "broker"
    broker_dir.mkdir()
    broker = Mosquitto(broker_dir).start_on_a_free_port()
    try:
        result = run("sim", "run", "--broker", broker.url, "--devices", "8", "--duration", "60", "--seed", "6",
                     "--out", tmp_path / "o")
    finally:
        broker.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads((tmp_path / "o" / "report.json").read_text())["comparison"]["counters_match_truth"]


def test_bad_scenarios_are_named(tmp_path):
    assert "unknown link 'carrier-pigeon'" in run("sim", "run", "--no-broker", "--links", "carrier-pigeon").stderr
    assert "unknown attack 'phishing'" in run("sim", "run", "--no-broker", "--attacks", "phishing=2").stderr
    scenario = tmp_path / "s.toml"
    scenario.write_text('devices = 2\ncolour = "blue"\n')
    result = run("sim", "run", "--no-broker", "--scenario", scenario)
    assert result.returncode == 2 and "unknown settings colour" in result.stderr
    scenario.write_text('devices = 2\nlinks = ["wifi"]\n[profiles.wifi]\nloss = "bernoulli"\nloss_rate = 0.3\n')
    result = run("sim", "run", "--no-broker", "--scenario", scenario, "--duration", "100", "--out", tmp_path / "o")
    assert result.returncode == 0, result.stderr
    wifi = json.loads((tmp_path / "o" / "report.json").read_text())["comparison"]["links"]["wifi"]
    assert abs(wifi["loss"]["configured"] - 0.3) < 0.01


def test_profiles_overridden_on_the_command_line(tmp_path):
    result = run("sim", "run", "--no-broker", "--devices", "2", "--links", "wifi", "--duration", "200",
                 "--attacks", "none", "--set", "wifi.loss=bernoulli", "--set", "wifi.loss_rate=0.25",
                 "--set", "wifi.jitter_dist=exponential", "--out", tmp_path / "o")
    assert result.returncode == 0, result.stderr
    wifi = json.loads((tmp_path / "o" / "report.json").read_text())["comparison"]["links"]["wifi"]
    assert abs(wifi["loss"]["configured"] - 0.25) < 0.01 and wifi["loss"]["inside"]
    bad = run("sim", "run", "--no-broker", "--set", "wifi.loss_rate")
    assert bad.returncode == 2 and "LINK.KEY=VALUE" in bad.stderr
    bad = run("sim", "run", "--no-broker", "--set", "wifi.jitter_dist=pareto")
    assert bad.returncode == 2 and "jitter_dist must be" in bad.stderr


def test_run_with_virtual_devices(tmp_path):
    """The real firmware on virtual MicroPython boards, through the fault proxies, checked
    against the proxies' ground truth; lossy models so that there is something to count."""
    result = run("sim", "run", "--virtual-devices", "2", "--links", "wifi,ble", "--duration", "8",
                 *[f"--set={link}.{item}" for link in ("wifi", "ble") for item in ("loss=bernoulli", "loss_rate=0.2")],
                 "--no-broker", "--out", tmp_path / "v")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "v" / "report.json").read_text())
    devices = report["hub"]["devices"]
    assert set(devices) == {"vdev-wifi-1", "vdev-ble-1"}
    assert all(d["valid"] > 5 for d in devices.values())
    assert sum(link["lost"] for link in report["hub"]["links"].values()) > 0
    assert report["comparison"]["counters_match_truth"] and report["comparison"]["outcomes_match_truth"]
    consoles = list((tmp_path / "v" / "virtual-devices" / "boards").glob("*.console.log"))
    assert len(consoles) == 2 and all("linkseal: connected, epoch 1" in c.read_text() for c in consoles)


def test_a_link_measured_by_the_hub_can_be_simulated_from_its_fit(tmp_path):
    """Measure, simulate, measure again: netem's bursty profile through the hub gives a fit;
    `sim run --profile-from` simulates the link with it, and the hub fits the same model back."""
    from tools.loss_sequences import HIDDEN_STATE_PROFILES, hub_link_entry, netem_gemodel

    measured = hub_link_entry(netem_gemodel(*HIDDEN_STATE_PROFILES["dense-bursts"], 100_000, 5))
    (tmp_path / "measured.json").write_text(json.dumps({"links": {"lora": measured}}))
    result = run("sim", "run", "--no-broker", "--devices", "1", "--links", "lora", "--rate", "10", "--duration", "10000",
                 "--seed", "3", "--profile-from", tmp_path / "measured.json", "--set", "lora.burst_rate=0",
                 "--out", tmp_path / "sim")
    assert result.returncode == 0, result.stderr
    refit = json.loads((tmp_path / "sim" / "report.json").read_text())["hub"]["links"]["lora"]["ge_fit"]
    first = measured["ge_fit"]
    for key in ("p", "r", "loss_in_bad", "loss_in_good"):
        tolerance = 4 * (first["stderr"][key] ** 2 + refit["stderr"][key] ** 2) ** 0.5 + 1e-3
        assert abs(refit[key] - first[key]) <= tolerance, (key, first, refit)
    (tmp_path / "plain.json").write_text(json.dumps({"links": {"lora": {"ge_fit": None, "ge_fit_reason": "too little"}}}))
    refused = run("sim", "run", "--no-broker", "--profile-from", tmp_path / "plain.json")
    assert refused.returncode == 2 and "no link in it has a Gilbert-Elliott fit" in refused.stderr
    missing = run("sim", "run", "--no-broker", "--profile-from", tmp_path / "nowhere.json")
    assert missing.returncode == 2 and "nowhere.json" in missing.stderr and "Traceback" not in missing.stderr
