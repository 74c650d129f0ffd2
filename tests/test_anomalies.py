"""`sim run --anomalies`: injected anomalies and a week of normal traffic against the hub's watch."""

import json
import subprocess
import sys

from hub.keys.keyfile import KeyFile
from shared.capture import encode_line
from simulator.anomalies import KINDS
from simulator.anomaly_check import judge, run

ALL_LINKS = ("ble", "cellular", "coax", "fiber", "lora", "rs485", "twisted-pair", "wifi")


def test_a_week_of_200_devices_every_anomaly_alarmed_and_no_false_alarms():
    result = run(7, 200, ALL_LINKS, 7 * 86400.0, KINDS)
    judgement = judge(result)
    rows = {row["kind"]: row for row in judgement["injected"]}
    assert set(rows) == set(KINDS)
    for kind in ("silence", "flood", "exfiltration", "reconnect_storm"):
        assert rows[kind]["detected"], rows[kind]
    assert rows["flood"]["rule"].startswith("record_flood") and rows["exfiltration"]["rule"] in (
        "large_records", "largest_record") and rows["reconnect_storm"]["rule"] == "reconnect_storm"
    # Silence: raised within 3 heartbeat periods of its start, cleared within one of its end.
    assert 0 < rows["silence"]["delay_heartbeats"] <= 3 and 0 <= rows["silence"]["clear_heartbeats"] <= 1
    assert not rows["drift"]["detected"]  # learned, never alarmed
    assert rows["clean_stop"]["liveness"] == "offline" and rows["clean_stop"]["ok"]
    assert judgement["all_detected"]
    # No alarm the truth contradicts: at most one per 1000 device-days (1400 device-days here).
    assert judgement["device_days"] == 1400
    assert judgement["false_alarms_per_1000_device_days"] <= 1.0, judgement["unmatched"]
    assert result["contradicted"] == []
    # Silences the links themselves caused are real silences: the truth confirms nothing intact
    # arrived for 3 heartbeat periods (none contradicted, above). Only lossy radio links cause them.
    silent_links = {e["device"].rsplit("-", 1)[0] for e in judgement["unmatched"] if e["kind"] == "silent"}
    assert silent_links <= {"lora", "ble", "cellular"}
    assert judgement["link_silences"] == sum(e["kind"] == "silent" for e in judgement["unmatched"])
    # The hub's report says it too: the device that stopped cleanly is offline, the rest online.
    devices = result["report"]["devices"]
    assert devices[rows["clean_stop"]["device"]]["liveness"] == "offline"
    assert sum(d["liveness"] == "online" for d in devices.values()) == 199


def test_two_runs_of_one_seed_raise_the_same_events_at_the_same_times():
    first = run(11, 24, ALL_LINKS, 2 * 86400.0, ("silence", "flood", "reconnect_storm"))
    second = run(11, 24, ALL_LINKS, 2 * 86400.0, ("silence", "flood", "reconnect_storm"))
    assert first["events"] == second["events"] and len(first["events"]) >= 6
    kinds = {e["kind"] for e in first["events"]}
    assert {"silent", "back", "behaviour_alarm", "behaviour_clear"} <= kinds


def test_hub_verify_of_the_capture_gives_the_simulators_events_every_time(tmp_path):
    keyfile = KeyFile.create(tmp_path / "hub.keys")
    capture = tmp_path / "capture.jsonl"
    with open(capture, "w") as out:
        result = run(5, 16, ALL_LINKS, 2 * 86400.0, ("silence", "exfiltration"), keyfile=keyfile,
                     capture=lambda t, topic, frame: out.write(encode_line(t, topic, frame) + "\n"))
    watched = ("silent", "back", "behaviour_alarm", "behaviour_clear")
    runs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-m", "linkseal", "hub", "verify", str(capture), "--keys",
                               str(keyfile.path), "--insecure-plaintext", "--json"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        runs.append([e for e in report["events"] if e["kind"] in watched])
    assert runs[0] == runs[1]
    assert [(e["kind"], e["device"], e["t"]) for e in runs[0]] == [
        (e["kind"], e["device"], e["t"]) for e in result["events"]]
    assert {e["kind"] for e in runs[0]} >= {"silent", "back", "behaviour_alarm"}


def test_sim_run_anomalies_writes_the_table_and_refuses_what_it_cannot_do(tmp_path):
    done = subprocess.run([sys.executable, "-m", "linkseal", "sim", "run", "--anomalies", "silence,flood",
                           "--devices", "16", "--out", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Injected anomalies vs the hub's watch" in done.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert [row["kind"] for row in report["anomalies"]["injected"]] == ["silence", "flood"]
    assert all(row["ok"] for row in report["anomalies"]["injected"])
    assert report["scenario"]["devices"] == 16 and len(report["scenario"]["paces"]) == 16
    for args, problem in ((["--anomalies", "meteor"], "not an anomaly"),
                          (["--anomalies", "--rate", "2"], "drop --rate"),
                          (["--anomalies", "--duration", "3600"], "too short"),
                          (["--anomalies", "--devices", "3"], "needs a device of its own")):
        done = subprocess.run([sys.executable, "-m", "linkseal", "sim", "run", *args, "--out", str(tmp_path)],
                              capture_output=True, text=True)
        assert done.returncode == 2 and problem in done.stderr and "Traceback" not in done.stderr, done.stderr
