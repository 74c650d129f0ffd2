"""The `linkseal` command end to end, as a user runs it (the installed console script)."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

LINKSEAL = Path(sys.executable).parent / "linkseal"
PASSPHRASE = "correct horse battery staple"


def run(*args, stdin=None, cwd=None, env=None):
    assert LINKSEAL.exists(), f"{LINKSEAL} missing: install the package (make test does)"
    environment = {**os.environ, "LINKSEAL_PASSPHRASE": PASSPHRASE, **(env or {})}
    return subprocess.run([str(LINKSEAL), *map(str, args)], input=stdin, capture_output=True, text=True,
                          cwd=cwd, timeout=120, env=environment)


def assert_input_error(result, *fragments):
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("linkseal: error:") or result.stderr.startswith("usage:")
    for fragment in fragments:
        assert fragment in result.stderr


@pytest.fixture
def provisioned(tmp_path):
    keys = tmp_path / "hub.keys"
    assert run("keys", "init", "--out", keys).returncode == 0
    device = tmp_path / "pump-1.json"
    result = run("keys", "provision", "pump-1", "--keys", keys, "--link", "ble", "--out", device)
    assert result.returncode == 0, result.stderr
    return keys, device


def test_seal_then_verify_capture(provisioned, tmp_path):
    keys, device = provisioned
    config = json.loads(device.read_text())
    assert stat.S_IMODE(device.stat().st_mode) == 0o600 and stat.S_IMODE(keys.stat().st_mode) == 0o600
    sealed = run("agent", "seal", "--device", device, "--epoch", "2", "--timestamp",
                 stdin="".join(f"hr={60 + i}\n" for i in range(10)))
    assert sealed.returncode == 0, sealed.stderr
    lines = sealed.stdout.splitlines()
    assert len(lines) == 10 and json.loads(lines[0])["topic"] == "linkseal/v1/pump-1/rec"
    # Lose seq 3, deliver seq 5 twice.
    capture = tmp_path / "capture.jsonl"
    capture.write_text("\n".join(lines[:3] + lines[4:6] + lines[5:]) + "\n")
    result = run("hub", "verify", capture, "--keys", keys, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    entry = report["devices"]["pump-1"]
    assert (entry["received"], entry["valid"], entry["lost"], entry["duplicate"]) == (10, 9, 1, 1)
    assert entry["link"] == "ble" and report["links"]["ble"]["lost"] == 1
    table = run("hub", "verify", capture, "--keys", keys, "--devices")
    assert table.returncode == 0 and "ble" in table.stdout and "pump-1" in table.stdout
    assert all(len(line) <= 80 for line in table.stdout.splitlines())
    for output in (sealed.stdout, result.stdout, table.stdout, sealed.stderr):
        assert config["key"] not in output
    assert "master_secret" not in keys.read_text()  # encrypted at rest


@pytest.mark.parametrize("content,fragment", [
    ('{"t": 1, "topic": "x", "payload_b64": "AA=="}\nnot json\n', ":2: not valid JSON"),
    ('{"t": 1, "topic": "x"}\n', ":1: missing field 'payload_b64'"),
    ('{"t": 1, "topic": "x", "payload_b64": "***"}\n', ":1: field 'payload_b64' is not valid base64"),
    ('["a"]\n', ":1: expected a JSON object"),
    ('{"t": "now", "topic": "x", "payload_b64": ""}\n', ":1: field 't' must be a finite number"),
])
def test_bad_capture_lines_are_named(provisioned, tmp_path, content, fragment):
    keys, _ = provisioned
    capture = tmp_path / "bad.jsonl"
    capture.write_text(content)
    assert_input_error(run("hub", "verify", capture, "--keys", keys), str(capture) + fragment)


def test_missing_and_unreadable_inputs(provisioned, tmp_path):
    keys, _ = provisioned
    assert_input_error(run("hub", "verify", tmp_path / "nope.jsonl", "--keys", keys), "no such file")
    assert_input_error(run("hub", "verify", tmp_path, "--keys", keys), "is a directory")
    capture = tmp_path / "empty.jsonl"
    capture.write_text("")
    assert_input_error(run("hub", "verify", capture, "--keys", tmp_path / "none.keys"), "no such key file")
    if os.geteuid() != 0:  # root reads anything; the permission case is only meaningful for users
        locked = tmp_path / "locked.jsonl"
        locked.write_text("")
        locked.chmod(0)
        assert_input_error(run("hub", "verify", locked, "--keys", keys), "permission denied")


def test_empty_capture_gives_an_empty_report(provisioned, tmp_path):
    keys, _ = provisioned
    capture = tmp_path / "empty.jsonl"
    capture.write_text("\n")
    result = run("hub", "verify", capture, "--keys", keys, "--json")
    assert result.returncode == 0
    assert json.loads(result.stdout) == {"links": {}, "devices": {}, "unknown_device": 0, "events": []}


def test_keys_errors_leave_files_untouched(provisioned, tmp_path):
    keys, _ = provisioned
    before = keys.read_bytes()
    assert_input_error(run("keys", "init", "--out", keys), "already exists")
    assert_input_error(run("keys", "provision", "a/b", "--keys", keys, "--link", "wifi", "--out",
                           tmp_path / "x.json"), "device id")
    assert_input_error(run("keys", "provision", "p", "--keys", keys, "--link", "tin-can", "--out",
                           tmp_path / "x.json"), "unknown link 'tin-can'")
    assert keys.read_bytes() == before
    assert not (tmp_path / "x.json").exists()


def test_agent_seal_refuses_an_oversized_record(provisioned):
    _, device = provisioned
    result = run("agent", "seal", "--device", device, stdin="ok\n" + "x" * 300 + "\n")
    assert_input_error(result, "stdin line 2", "over the ble limit")


def test_help_shows_examples_for_every_command():
    for args in (["--help"], ["keys", "init", "--help"], ["keys", "provision", "--help"],
                 ["hub", "verify", "--help"], ["agent", "seal", "--help"], ["sim", "capture", "--help"],
                 ["demo", "--help"], ["keys", "rotate", "--help"], ["keys", "revoke", "--help"],
                 ["keys", "list", "--help"], ["keys", "encrypt", "--help"], ["keys", "ca", "init", "--help"],
                 ["keys", "cert", "--help"], ["hub", "run", "--help"], ["hub", "report", "--help"],
                 ["hub", "audit", "--help"], ["hub", "broker-config", "--help"], ["sim", "run", "--help"],
                 ["sim", "record", "--help"], ["sim", "replay", "--help"], ["sim", "proxy", "--help"],
                 ["firmware", "build", "--help"], ["firmware", "flash", "--help"], ["agent", "run", "--help"]):
        result = run(*args)
        assert result.returncode == 0 and "example" in result.stdout, args
    assert_input_error(run("hub"), "usage")
    assert_input_error(run("firmware"), "usage")


def test_sim_capture_verifies_to_its_ground_truth(tmp_path):
    capture, keys = tmp_path / "sim.jsonl", tmp_path / "sim.keys"
    result = run("sim", "capture", "--out", capture, "--keys-out", keys, "--seed", "4", "--duration", "100")
    assert "ciphertext" in keys.read_text()
    assert result.returncode == 0, result.stderr
    report = json.loads(run("hub", "verify", capture, "--keys", keys, "--json").stdout)
    # 12 devices; the default attacks: 3 unknown ids and a flood of 50, and 5 kinds x 3 forgeries.
    assert len(report["devices"]) == 12 and report["unknown_device"] == 53
    assert sum(d["lost"] for d in report["devices"].values()) > 0
    assert sum(d["forged"] for d in report["devices"].values()) == 15


def test_demo_runs_and_checks_itself(tmp_path):
    result = run("demo", "--no-broker", "--seed", "5", "--out", tmp_path / "demo")
    assert result.returncode == 0, result.stdout + result.stderr
    text = " ".join(result.stdout.split())  # rich wraps at 80 columns
    assert "Every counter matches the ground truth: True" in text
    assert "Attacks accepted: 0" in text and "fiber" in text
    assert (tmp_path / "demo" / "report.json").exists() and (tmp_path / "demo" / "lora.png").exists()


def test_keys_lifecycle_commands(tmp_path):
    keys = tmp_path / "hub.keys"
    no_passphrase = {"LINKSEAL_PASSPHRASE": ""}
    assert_input_error(run("keys", "init", "--out", keys, env=no_passphrase), "no passphrase")
    assert not keys.exists()
    assert run("keys", "init", "--out", keys, "--insecure-plaintext").returncode == 0
    assert_input_error(run("keys", "list", "--keys", keys), "is not encrypted", "linkseal keys encrypt")
    migrated = run("keys", "encrypt", "--keys", keys)
    assert migrated.returncode == 0 and "argon2id" in migrated.stdout
    for device in ("pump-1", "pump-2"):
        assert run("keys", "provision", device, "--keys", keys, "--link", "lora", "--out",
                   tmp_path / f"{device}.json").returncode == 0
    assert_input_error(run("keys", "rotate", "pump-1", "--keys", keys, "--out", tmp_path / "pump-1.json"),
                       "pump-1.json: exists; add --force")
    rotated = run("keys", "rotate", "pump-1", "--keys", keys, "--out", tmp_path / "pump-1.json", "--grace", "2h",
                  "--force")
    assert rotated.returncode == 0 and "now key id 1" in rotated.stdout
    assert json.loads((tmp_path / "pump-1.json").read_text())["key_id"] == 1
    assert run("keys", "revoke", "pump-2", "--keys", keys).returncode == 0
    listing = json.loads(run("keys", "list", "--keys", keys, "--json").stdout)
    assert listing["encrypted_with"] == "argon2id"
    assert [(d["device"], d["key_id"], d["state"], d["previous_key_ids"]) for d in listing["devices"]] == [
        ("pump-1", 1, "active", [0]), ("pump-2", 0, "revoked", [])]
    table = run("keys", "list", "--keys", keys)
    assert "revoked" in table.stdout and all(len(line) <= 80 for line in table.stdout.splitlines())
    assert_input_error(run("keys", "list", "--keys", keys, env={"LINKSEAL_PASSPHRASE": "wrong"}), "wrong passphrase")
    assert_input_error(run("keys", "rotate", "nobody", "--keys", keys, "--out", tmp_path / "n.json"), "not in")
    assert_input_error(run("keys", "rotate", "pump-1", "--keys", keys, "--out", tmp_path / "n.json", "--grace",
                           "soon"), "argument --grace: 'soon'")
    keys.chmod(0o644)
    assert_input_error(run("keys", "list", "--keys", keys), f"chmod 600 {keys}")


def test_ca_cert_and_broker_config_commands(tmp_path):
    keys = tmp_path / "hub.keys"
    run("keys", "init", "--out", keys)
    run("keys", "provision", "pump-1", "--keys", keys, "--link", "wifi", "--out", tmp_path / "pump-1.json")
    assert run("keys", "ca", "init", "--dir", tmp_path / "ca").returncode == 0
    assert_input_error(run("keys", "ca", "init", "--dir", tmp_path / "ca"), "refusing to replace a CA")
    issued = run("keys", "cert", "hub", "--ca", tmp_path / "ca", "--out", tmp_path / "certs")
    assert issued.returncode == 0 and "CN=linkseal/hub" in issued.stdout
    assert stat.S_IMODE((tmp_path / "certs" / "hub-key.pem").stat().st_mode) == 0o600
    key_before = (tmp_path / "certs" / "hub-key.pem").read_bytes()
    assert_input_error(run("keys", "cert", "hub", "--ca", tmp_path / "ca", "--out", tmp_path / "certs"),
                       "hub.pem: exists; add --force")
    assert (tmp_path / "certs" / "hub-key.pem").read_bytes() == key_before
    assert run("keys", "cert", "hub", "--ca", tmp_path / "ca", "--out", tmp_path / "certs", "--force").returncode == 0
    assert_input_error(run("keys", "cert", "bad/id", "--ca", tmp_path / "ca", "--out", tmp_path / "certs"),
                       "device id")
    assert_input_error(run("keys", "cert", "pump-1", "--ca", tmp_path / "no-ca", "--out", tmp_path / "certs"),
                       "missing")
    assert_input_error(run("hub", "broker-config", "--keys", keys, "--out", tmp_path / "b", "--tls"), "--tls needs")
    written = run("hub", "broker-config", "--keys", keys, "--out", tmp_path / "b", "--tls", "--ca", tmp_path / "ca")
    assert written.returncode == 0
    conf = (tmp_path / "b" / "mosquitto.conf").read_text()
    assert "require_certificate true" in conf and "allow_anonymous false" in conf
    # A relay's account: a client certificate naming it with --tls, a password without.
    relay = run("hub", "broker-config", "--keys", keys, "--out", tmp_path / "r", "--tls", "--ca", tmp_path / "ca",
                "--relay", "hall-2=pump-1")
    assert relay.returncode == 0 and "--cert-file" in relay.stdout and (tmp_path / "r" / "relay-hall-2.pem").exists()
    relay = run("hub", "broker-config", "--keys", keys, "--out", tmp_path / "p", "--relay", "hall-2")
    assert relay.returncode == 0 and "--username linkseal/relay/hall-2 --password-file" in relay.stdout
    assert_input_error(run("hub", "broker-config", "--keys", keys, "--out", tmp_path / "q", "--relay", "hall 2"),
                       "--relay 'hall 2'")
    assert_input_error(run("hub", "broker-config", "--keys", keys, "--out", tmp_path / "q", "--relay", "h=ghost"),
                       "no active device ghost")


def test_provision_never_overwrites_silently(tmp_path):
    keys = tmp_path / "hub.keys"
    run("keys", "init", "--out", keys, "--insecure-plaintext")
    device = tmp_path / "pump-1.json"
    assert run("keys", "provision", "pump-1", "--keys", keys, "--insecure-plaintext", "--link", "wifi", "--out",
               device).returncode == 0
    before = device.read_bytes()
    assert_input_error(run("keys", "provision", "pump-1", "--keys", keys, "--insecure-plaintext", "--link", "lora",
                           "--out", tmp_path / "other.json"),
                       "pump-1: already provisioned", "this would change link wifi -> lora", "--force")
    assert_input_error(run("keys", "provision", "pump-2", "--keys", keys, "--insecure-plaintext", "--link", "wifi",
                           "--out", device), f"--out {device}: exists; add --force")
    assert device.read_bytes() == before and not (tmp_path / "other.json").exists()
    listing = json.loads(run("keys", "list", "--keys", keys, "--insecure-plaintext", "--json").stdout)
    assert [(d["device"], d["link"]) for d in listing["devices"]] == [("pump-1", "wifi")]  # nothing moved
    forced = run("keys", "provision", "pump-1", "--keys", keys, "--insecure-plaintext", "--link", "lora", "--out",
                 device, "--force")
    assert forced.returncode == 0 and json.loads(device.read_text())["link"] == "lora"
    assert_input_error(run("keys", "list", "--keys", tmp_path, "--insecure-plaintext"), "is a directory")
    assert_input_error(run("keys", "provision", "pump-3", "--keys", keys, "--insecure-plaintext", "--link", "wifi",
                           "--out", tmp_path), "is a directory")


def test_serial_options_errors_name_what_is_wrong(provisioned, tmp_path):
    """The relay and the Linux agent on a serial line: a port that is not there, RS-485 mode on a
    port whose driver has none (a pseudo-terminal), a poll list with a bad id, both transports."""
    _, device = provisioned
    master, slave = os.openpty()
    try:
        pty = os.ttyname(slave)
        relay = ("relay", "serial", "--broker", "mqtt://127.0.0.1:1", "--name", "line-1", "--state-dir",
                 tmp_path / "spool")
        assert_input_error(run(*relay, "--port", tmp_path / "ttyUSB9"), "--port", "cannot open it")
        assert_input_error(run(*relay, "--port", pty, "--rs485"), "--rs485: the kernel refused RS-485 mode")
        assert_input_error(run(*relay, "--port", pty, "--poll", "plc-1,plc/2"), "--poll 'plc/2'")
        assert_input_error(run(*relay[:-2], "--port", pty, "--name", "line 1"), "--name 'line 1'")
        assert not (tmp_path / "spool").exists()  # nothing created for a relay that could not start
        agent = ("agent", "run", "--config", device, "--state-dir", tmp_path / "state")
        assert_input_error(run(*agent), "either --broker (MQTT) or --serial")
        assert_input_error(run(*agent, "--serial", pty, "--broker", "mqtt://127.0.0.1"), "either --broker")
        assert_input_error(run(*agent, "--serial", pty, "--rs485"), "--rs485")
    finally:
        os.close(master)
        os.close(slave)
