"""`sim run --links lora --lorawan chirpstack|ttn`: LoRaWAN devices behind emulated modems (duty
cycle, payload per data rate, a power cut and a join), several gateways each, a network server
publishing ChirpStack or TTN events to a real Mosquitto, read by an in-process `hub run
--lorawan`; the hub's radio figures held against the simulator's ground truth."""

import json
import subprocess

from simulator.lorawan.run import compare
from tools.services import LINKSEAL


def sim(*args):
    return subprocess.run([str(LINKSEAL), "sim", "run", "--links", "lora", *map(str, args)], capture_output=True,
                          text=True, timeout=600)


def test_chirpstack_through_mosquitto_the_split_and_the_gateways_equal_the_truth(tmp_path, broker):
    result = sim("--lorawan", "chirpstack", "--devices", 6, "--seed", 11, "--broker", broker.url, "--out", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    comparison, hub = report["comparison"], report["hub"]
    assert comparison["radio_matches_truth"] is True
    rows = comparison["devices"].values()
    # The run has what the split is for: uplinks lost in the air, records never sent (a queue
    # overflowing at SF12's duty cycle, records too long for 51 bytes), and gateways that differ.
    assert sum(r["lost_after_transmission"]["truth"] for r in rows) > 0
    assert sum(r["lost_before_transmission"]["truth"] for r in rows) > 0
    assert all(len(r["gateways"]) == 3 for r in rows)
    for name, device in hub["devices"].items():
        assert device["forged"] == device["malformed"] == device["duplicate"] == 0, (name, device)
        assert device["status"]["epoch"] == 2  # the power cut: a new epoch, a new join, fCnt from 0
    # The devices say why they dropped records: a full queue or too long for the data rate.
    assert any(device["status"]["too_large"] > 0 for device in hub["devices"].values())
    assert sum(device["status"]["source_drops"] for device in hub["devices"].values()) > 0
    assert "MISMATCH" not in result.stdout and "gw-north" in result.stdout


def test_ttn_without_a_broker_and_a_wrong_hub_figure_is_caught(tmp_path):
    result = sim("--lorawan", "ttn", "--devices", 4, "--seed", 3, "--no-broker", "--out", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["comparison"]["radio_matches_truth"] is True
    truth = {name: {"uplinks": row["uplinks"]["truth"],
                    "lost_after_transmission": row["lost_after_transmission"]["truth"],
                    "lost_before_transmission": row["lost_before_transmission"]["truth"],
                    "gateways": {g: v["truth"] for g, v in row["gateways"].items()}, "never_sent": row["never_sent"]}
             for name, row in report["comparison"]["devices"].items()}
    assert compare(truth, report["hub"])["radio_matches_truth"] is True
    report["hub"]["devices"]["field-02"]["radio"]["lost_after_transmission"] += 1  # the hub off by one
    assert compare(truth, report["hub"])["radio_matches_truth"] is False


def test_lorawan_takes_lora_devices_only(tmp_path):
    result = sim("--lorawan", "chirpstack", "--links", "wifi", "--out", tmp_path)
    assert result.returncode == 2 and "--links lora" in result.stderr and "Traceback" not in result.stderr
