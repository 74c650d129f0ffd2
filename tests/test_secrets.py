"""Secrets hygiene: every command, run with known keys, never prints, logs, reports or stores them.

Excluded from the search, because holding secrets is their job: the encrypted key file,
device configs (a device's own key and broker password, also in a firmware build), the hub's
broker password file, and certificate private keys.
"""

import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from agent import Sealer, topic_for
from hub.keys.keyfile import HUB_MQTT_USER, KeyFile
from tools.services import HubProcess, Mosquitto, frames_seen, publish, wait_for

LINKSEAL = Path(sys.executable).parent / "linkseal"
PASSPHRASE = b"hygiene test passphrase 7f3a"


def forms(secret: bytes) -> list[bytes]:
    """The ways a secret could leak: raw, hex either case, base64 and its URL-safe variant."""
    b64 = base64.b64encode(secret)
    urlsafe = base64.urlsafe_b64encode(secret)
    return [secret, secret.hex().encode(), secret.hex().upper().encode(), b64, b64.rstrip(b"="),
            urlsafe, urlsafe.rstrip(b"=")]


def test_no_command_reveals_key_material(tmp_path):
    passphrase_file = tmp_path / "passphrase"
    passphrase_file.write_bytes(PASSPHRASE)
    passphrase_file.chmod(0o600)
    env = {**os.environ, "LINKSEAL_PASSPHRASE_FILE": str(passphrase_file)}
    outputs = []

    def run(*args, stdin=None, ok=True):
        result = subprocess.run([str(LINKSEAL), *map(str, args)], input=stdin, capture_output=True, env=env,
                                timeout=120)
        outputs.append(result.stdout + result.stderr)
        assert (result.returncode == 0) == ok, (args, result.stderr)
        return result

    keys, devices = tmp_path / "hub.keys", tmp_path / "devices"
    devices.mkdir()
    run("keys", "init", "--out", keys)
    for device, link in (("pump-1", "wifi"), ("monitor-2", "ble")):
        run("keys", "provision", device, "--keys", keys, "--link", link, "--out", devices / f"{device}.json")
    run("keys", "list", "--keys", keys)
    run("keys", "list", "--keys", keys, "--json")
    run("keys", "rotate", "monitor-2", "--keys", keys, "--out", devices / "monitor-2.json", "--grace", "1h",
        "--force")
    run("keys", "ca", "init", "--dir", tmp_path / "ca")
    run("keys", "cert", "pump-1", "--ca", tmp_path / "ca", "--out", tmp_path / "certs")
    run("hub", "broker-config", "--keys", keys, "--out", tmp_path / "broker-config", "--data-dir", tmp_path)
    capture = tmp_path / "capture.jsonl"
    sealed = run("agent", "seal", "--device", devices / "pump-1.json", "--epoch", "1", "--timestamp",
                 stdin=b"hr=71\nhr=72\nhr=73\n")
    capture.write_bytes(sealed.stdout)
    run("hub", "verify", capture, "--keys", keys)
    report = run("hub", "verify", capture, "--keys", keys, "--json")
    (tmp_path / "report.json").write_bytes(report.stdout)
    run("hub", "verify", capture, "--keys", tmp_path / "nope.keys", ok=False)
    run("keys", "provision", "bad/id", "--keys", keys, "--link", "wifi", "--out", tmp_path / "x.json", ok=False)
    run("sim", "capture", "--out", tmp_path / "sim.jsonl", "--keys-out", tmp_path / "sim.keys", "--duration", "20")
    run("demo", "--no-broker", "--out", tmp_path / "demo")
    run("sim", "run", "--no-broker", "--duration", "20", "--out", tmp_path / "sim-run")
    run("firmware", "build", "--device", devices / "pump-1.json", "--board", "esp32", "--broker", "mqtt://127.0.0.1",
        "--out", tmp_path / "build")

    broker_dir = tmp_path / "broker"
    broker_dir.mkdir()
    broker = Mosquitto(broker_dir).start_on_a_free_port()
    hub = HubProcess(broker, keys, tmp_path / "hub.db", tmp_path / "hub.log",
                     env={"LINKSEAL_PASSPHRASE_FILE": str(passphrase_file)}).start()
    try:
        hub.wait_connected()
        config = json.loads((devices / "pump-1.json").read_text())
        sealer = Sealer("pump-1", bytes.fromhex(config["key"]), epoch=2)
        forged = bytearray(sealer.seal(b"x"))
        forged[6] ^= 1
        publish(broker.port, [(topic_for("pump-1"), sealer.seal(b"%d" % i)) for i in range(20)]
                + [(topic_for("pump-1"), bytes(forged)), (topic_for("ghost"), b"\x00" * 30)])
        wait_for(lambda: frames_seen(tmp_path / "hub.db") == 22, 30, "the hub to store everything")
        hub.signal(signal.SIGTERM)
        assert hub.wait() == 0
    finally:
        hub.stop()
        broker.stop()
    run("hub", "report", "--db", tmp_path / "hub.db", "--json")
    run("hub", "report", "--db", tmp_path / "hub.db", "--devices")
    run("hub", "audit", "--db", tmp_path / "hub.db")

    # Everything the secrets could have leaked into.
    keyfile = KeyFile.load(keys, PASSPHRASE)
    secrets = [keyfile._master, PASSPHRASE, keyfile.mqtt_password(HUB_MQTT_USER).encode()]
    for device in keyfile.devices:
        config = keyfile.device_config(device)
        secrets += [bytes.fromhex(config["key"]), config["mqtt_password"].encode()]
    secrets += [bytes.fromhex(json.loads((devices / "monitor-2.json").read_text())["key"])]
    excluded = {keys, tmp_path / "sim.keys", passphrase_file, tmp_path / "broker-config" / "hub.password",
                tmp_path / "build" / "device.json",
                *devices.iterdir(), *(tmp_path / "ca").glob("*-key.pem"), *(tmp_path / "certs").glob("*-key.pem")}
    stored = [p for p in tmp_path.rglob("*") if p.is_file() and p not in excluded]
    assert any(p.name == "hub.db" for p in stored) and any(p.name == "hub.log" for p in stored)
    places = [(f"output of command {i}", text) for i, text in enumerate(outputs)]
    places += [(str(p), p.read_bytes()) for p in stored]
    # A failure names the place, the secret's number and the form, never the secret itself.
    leaks = [(where, f"secret {n}", f"form {k}") for where, data in places for n, secret in enumerate(secrets)
             for k, form in enumerate(forms(secret)) if form in data]
    assert leaks == []
