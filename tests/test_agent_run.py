"""`linkseal agent run` on a "Linux device": through Mosquitto to `hub run`, across kill -9 and
broker outages: every record arrives once, none lost, none sealed twice."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from hub.keys.keyfile import KeyFile, write_private_json
from tools.services import HubProcess, stored_report, wait_for

LINKSEAL = Path(sys.executable).parent / "linkseal"


def start_agent(tmp_path, broker, config, source, name="agent"):
    log = open(tmp_path / f"{name}.log", "w")
    return subprocess.Popen([str(LINKSEAL), "agent", "run", "--config", str(config), "--broker", broker.url,
                             "--source", str(source), "--state-dir", str(tmp_path / "state"), "--log-json",
                             "--max-rate", "0",  # as fast as it goes: the hub below allows it
                             "--heartbeat", "0.2"],
                            stdout=log, stderr=log)


def stored_payloads(db) -> list:
    return [row[0] for row in sqlite3.connect(db).execute("SELECT payload FROM records ORDER BY epoch, seq")]


def setup(tmp_path, broker, lines):
    keyfile = KeyFile.create(tmp_path / "hub.keys")
    config = tmp_path / "pump-1.json"
    write_private_json(config, keyfile.provision("pump-1", "wifi"))
    source = tmp_path / "readings.log"
    source.write_text("".join(f"reading {i}\n" for i in range(lines)))
    hub_toml = tmp_path / "hub.toml"
    hub_toml.write_text("[rate_limits]\ndefault = { rate = 100000, burst = 100000 }\n")
    hub = HubProcess(broker, keyfile.path, tmp_path / "hub.db", tmp_path / "hub.log", "--config", hub_toml).start()
    hub.wait_connected()
    return hub, config, source


def test_kill_9_loses_nothing_and_seals_nothing_twice(tmp_path, broker):
    lines = 10000
    hub, config, source = setup(tmp_path, broker, lines)
    try:
        agent = start_agent(tmp_path, broker, config, source)
        wait_for(lambda: stored_report(hub.db)["links"].get("wifi", {}).get("valid", 0) > 100, 60, "some records")
        assert agent.poll() is None, "the agent finished before it could be killed mid-stream"
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        agent = start_agent(tmp_path, broker, config, source, name="agent2")
        assert agent.wait(120) == 0
        wait_for(lambda: len(stored_payloads(hub.db)) >= lines, 60, "every record at the hub")
        # The broker published the killed agent's last will (its sealed death message); the second
        # run sent its own when it stopped.
        wait_for(lambda: [e["kind"] for e in stored_report(hub.db)["events"]].count("death") == 2, 30,
                 "both death messages")
    finally:
        hub.stop()
    report = stored_report(hub.db)
    kinds = [e["kind"] for e in report["events"]]
    # Deaths: the killed run's last will, and the second run's own when it stopped cleanly.
    assert kinds.count("birth") == 2 and kinds.count("death") == 2 and "forged" not in kinds
    assert report["devices"]["pump-1"]["liveness"] == "offline"
    assert report["devices"]["pump-1"]["status"]["reset_cause"] == "process_start"
    payloads = stored_payloads(hub.db)
    assert sorted(payloads) == sorted(f"reading {i}".encode() for i in range(lines))  # each exactly once
    assert payloads == [f"reading {i}".encode() for i in range(lines)]  # and in order
    epochs = sqlite3.connect(hub.db).execute("SELECT DISTINCT epoch FROM records ORDER BY epoch").fetchall()
    assert [e[0] for e in epochs] == [1, 2]  # the restart advanced the epoch
    device = stored_report(hub.db)["devices"]["pump-1"]
    assert device["forged"] == 0 and device["lost"] == 0
    # Every frame was in the store before it was sent: the kill destroyed at most the one being
    # sealed, and the second run's birth said so within the seal lease.
    assert device["lost_on_device"] <= 1 and device["lost_on_device_max"] <= 1 + 64, device
    # The second run stopped cleanly: its seal mark is exact (lease 0), the next birth's prev.
    second = sqlite3.connect(hub.db).execute("SELECT COUNT(*) FROM records WHERE epoch = 2").fetchone()[0]
    assert (tmp_path / "state" / "sealmark").read_text().split()[:3] == ["2", str(second), "0"]


def test_broker_outage_is_buffered_then_delivered_once(tmp_path, broker):
    lines = 400
    hub, config, source = setup(tmp_path, broker, lines)
    try:
        agent = start_agent(tmp_path, broker, config, source)
        wait_for(lambda: len(stored_payloads(hub.db)) > 20, 60, "the first records")
        broker.stop()
        broker.start()
        assert agent.wait(120) == 0
        wait_for(lambda: len(stored_payloads(hub.db)) >= lines, 60, "every record after the outage")
    finally:
        hub.stop()
    assert stored_payloads(hub.db) == [f"reading {i}".encode() for i in range(lines)]
    device = stored_report(hub.db)["devices"]["pump-1"]
    assert device["lost"] == 0 and device["valid"] == lines


def test_damaged_epoch_file_refuses_to_seal(tmp_path, broker):
    hub, config, source = setup(tmp_path, broker, 5)
    hub.stop()
    first = start_agent(tmp_path, broker, config, source)
    assert first.wait(60) == 0
    (tmp_path / "state" / "epoch").write_text("9 00000000\n")
    result = subprocess.run([str(LINKSEAL), "agent", "run", "--config", str(config), "--broker", broker.url,
                             "--source", str(source), "--state-dir", str(tmp_path / "state")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "damaged" in result.stderr and "refusing to seal" in result.stderr


def test_a_refused_login_is_logged_as_one_and_credentials_come_from_a_file_or_the_environment(tmp_path):
    from hub.keys.broker_config import mosquitto_password_line
    from tools.services import Mosquitto

    passwords = tmp_path / "passwords"
    passwords.write_text(mosquitto_password_line("pump-1", "the right one") + "\n")
    (tmp_path / "broker").mkdir()
    broker = Mosquitto(tmp_path / "broker", auth=("allow_anonymous false", f"password_file {passwords}"))
    broker.start_on_a_free_port()
    keyfile = KeyFile.create(tmp_path / "hub.keys")
    config = tmp_path / "pump-1.json"
    write_private_json(config, keyfile.provision("pump-1", "wifi"))
    source = tmp_path / "readings.log"
    source.write_text("a\nb\nc\n")
    (tmp_path / "wrong.txt").write_text("not it\n")

    def agent(name, *extra, env=None):
        log = open(tmp_path / f"{name}.log", "w")
        return subprocess.Popen([str(LINKSEAL), "agent", "run", "--config", str(config), "--broker", broker.url,
                                 "--source", str(source), "--state-dir", str(tmp_path / "state"), "--log-json",
                                 "--username", "pump-1", *extra], stdout=log, stderr=log, env=env)

    def events(name):
        return [json.loads(line) for line in (tmp_path / f"{name}.log").read_text().splitlines()
                if line.startswith("{")]

    try:
        refused = agent("refused", "--password-file", str(tmp_path / "wrong.txt"))
        wait_for(lambda: any(e["event"] == "connect_refused" for e in events("refused")), 30, "a refused login")
        refused.send_signal(signal.SIGTERM)
        refused.wait(30)
        logged = [e["event"] for e in events("refused")]
        assert "connected" not in logged and "disconnected" not in logged
        assert next(e for e in events("refused") if e["event"] == "connect_refused")["reason"] == "Not authorized"
        accepted = agent("accepted", env={**os.environ, "LINKSEAL_MQTT_PASSWORD": "the right one"})
        assert accepted.wait(60) == 0  # every record acknowledged by the broker, then done
        assert "connected" in [e["event"] for e in events("accepted")]
    finally:
        broker.stop()
    for name in ("refused", "accepted"):
        assert "the right one" not in (tmp_path / f"{name}.log").read_text()
