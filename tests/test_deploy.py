"""The systemd unit for a bastion host: confined as the hardening issue asks, and valid."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools.guides import guide_blocks

UNIT = Path(__file__).resolve().parent.parent / "hub" / "deploy" / "linkseal-hub.service"
REQUIRED = {
    "DynamicUser": "yes", "StateDirectory": "linkseal", "ProtectSystem": "strict", "ProtectHome": "yes",
    "PrivateTmp": "yes", "NoNewPrivileges": "yes", "CapabilityBoundingSet": "",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "SystemCallArchitectures": "native",
    "SystemCallFilter": "@system-service",
}


RELAY_UNIT = Path(__file__).resolve().parent.parent / "relay" / "deploy" / "linkseal-relay.service"


def directives(unit: Path = UNIT) -> dict:
    text = unit.read_text().replace("\\\n", " ")
    found = {}
    for line in text.splitlines():
        match = re.match(r"^(\w+)=(.*)$", line.strip())
        if match:
            found.setdefault(match[1], []).append(match[2].strip())
    return found


def test_unit_confines_the_hub():
    found = directives()
    for key, value in REQUIRED.items():
        assert found.get(key) == [value], key
    exec_start = " ".join(found["ExecStart"][0].split())
    assert "--metrics 127.0.0.1:" in exec_start  # metrics never on a public address
    # Secrets come as credentials: the passphrase by file, never in the environment itself.
    assert "Environment" in found and all("LINKSEAL_PASSPHRASE=" not in e for e in found["Environment"])
    assert "LINKSEAL_PASSPHRASE_FILE=%d/passphrase" in found["Environment"]
    assert {c.split(":")[0] for c in found["LoadCredential"]} == {"hub.keys", "passphrase", "hub-key.pem", "hub.pem",
                                                                   "ca.pem", "hub.toml"}
    assert "--keys %d/hub.keys" in exec_start and "--password" not in exec_start


def test_unit_confines_the_relay():
    found = directives(RELAY_UNIT)
    for key, value in {**REQUIRED, "StateDirectory": "linkseal-relay", "DevicePolicy": "closed"}.items():
        assert found.get(key) == [value], key
    exec_start = " ".join(found["ExecStart"][0].split())
    port = re.search(r"--port (\S+)", exec_start)[1]
    assert found["DeviceAllow"] == [f"{port} rw"]  # its own serial port and no other device
    assert "--metrics 127.0.0.1:" in exec_start and "--password-file %d/relay.pw" in exec_start
    assert {c.split(":")[0] for c in found["LoadCredential"]} == {"relay.pw", "ca.pem"}
    assert "Environment" not in found and "--keys" not in exec_start  # no key, nothing secret in its environment


@pytest.mark.parametrize("unit_path", [UNIT, RELAY_UNIT], ids=["hub", "relay"])
def test_systemd_analyze_accepts_the_unit(tmp_path, unit_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:  # not every CI machine has systemd; the directive checks above still run
        print("systemd-analyze not installed: only the directive checks ran")
        return
    # verify needs ExecStart to exist: point it at this checkout's linkseal.
    unit = tmp_path / unit_path.name
    unit.write_text(unit_path.read_text().replace("/opt/linkseal/.venv/bin/linkseal",
                                             str(Path(sys.executable).parent / "linkseal")))
    verify = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr  # unknown keys only warn
    security = subprocess.run([analyze, "security", "--offline=true", str(unit)], capture_output=True, text=True,
                              timeout=60)
    exposure = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", security.stdout)[1])
    assert exposure <= 2.0, security.stdout[-2000:]


def test_threat_model_cites_tests_that_exist():
    root = Path(__file__).resolve().parent.parent
    cited = set(re.findall(r"`(test_\w+)`", (root / "docs" / "threat-model.md").read_text()))
    defined = set(re.findall(r"^def (test_\w+)", "\n".join(p.read_text() for p in (root / "tests").glob("test_*.py")),
                             re.M))
    assert cited and cited <= defined, cited - defined


GUIDE = Path(__file__).resolve().parent.parent / "docs" / "deploy-bastion.md"
NOT_RUN = "# not run by tests/test_deploy.py"


def test_the_bastion_guide_run_in_order_reaches_a_working_hub():
    """docs/deploy-bastion.md as a script: every sh block in order, as root, in one shell, with
    this test's own directories in its settings and tools/systemd_standin.py for systemctl
    (the unit's ExecStart run by hand with its credentials). Mosquitto, started as root, runs
    as its own user, as on Debian: every file the guide gives it must be readable to it. Then a
    device publishes over mutual TLS and the hub stores its record."""
    import json
    import os
    import tempfile
    import time

    import paho.mqtt.client as mqtt

    from agent import Sealer, topic_for
    from tools.services import free_port, wait_for

    blocks = guide_blocks(GUIDE)
    skipped = [b for b in blocks if b.startswith(NOT_RUN)]
    assert len(skipped) == 1 and "apt-get install" in skipped[0]  # only the system's own installation
    root = Path(tempfile.mkdtemp(prefix="linkseal-guide-"))
    root.chmod(0o755)  # Mosquitto's own user must reach the files the guide gives it
    port = free_port()
    bin_dir = Path(sys.executable).parent
    overrides = (f"LINKSEAL={bin_dir / 'linkseal'}\nETC={root}/etc/linkseal\nBROKER_DIR={root}/etc/mosquitto/linkseal\n"
                 f"BROKER_DATA={root}/var/lib/mosquitto\nMOSQUITTO_CONF={root}/etc/mosquitto/mosquitto.conf\n"
                 f"UNIT_DIR={root}/etc/systemd/system\nSTATE={root}/var/lib/linkseal\nBROKER_HOST=localhost\n"
                 f"BROKER_PORT={port}\nexport MOSQUITTO_CONF UNIT_DIR\n"
                 f"mkdir -p \"$(dirname \"$MOSQUITTO_CONF\")\" \"$UNIT_DIR\" \"$STATE\"\n")
    standin = Path(__file__).resolve().parent.parent / "tools" / "systemd_standin.py"
    prelude = (f"set -euo pipefail\nexport STANDIN_ROOT={root}\n"
               f"systemctl() {{ {sys.executable} {standin} systemctl \"$@\"; }}\n"
               f"journalctl() {{ {sys.executable} {standin} journalctl \"$@\"; }}\n")
    script = prelude + "".join(b + (overrides if "LINKSEAL=/opt/" in b else "") for b in blocks if b not in skipped)
    work = root / "work"
    work.mkdir()
    try:
        run = subprocess.run(["bash", "-c", script], cwd=work, capture_output=True, text=True, timeout=600,
                             env={k: v for k, v in os.environ.items() if not k.startswith("LINKSEAL_")})
        hub_log = (root / "linkseal-hub.log").read_text() if (root / "linkseal-hub.log").exists() else ""
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:] + hub_log[-3000:]
        # Restarted after the rotation, with the new key file: subscribed again.
        wait_for(lambda: (root / "linkseal-hub.log").read_text().count('"event": "subscribed"') == 2, 30,
                 "the restarted hub to subscribe")
        # A device with its certificate and its (rotated) key publishes a record.
        config = json.loads((work / "pump-12.json").read_text())
        sealer = Sealer("pump-12", bytes.fromhex(config["key"]), link="wifi", epoch=1, key_id=config["key_id"])
        device = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pump-12")
        device.tls_set(ca_certs=str(root / "etc/linkseal/ca/ca.pem"), certfile=str(work / "certs/pump-12.pem"),
                       keyfile=str(work / "certs/pump-12-key.pem"))
        device.connect("localhost", port)
        device.loop_start()
        try:
            device.publish(topic_for("pump-12"), sealer.seal(b'{"hr": 71}'), qos=1).wait_for_publish(30)
        finally:
            device.disconnect()
            device.loop_stop()
        report = lambda: subprocess.run([str(bin_dir / "linkseal"), "hub", "report", "--db",  # noqa: E731
                                         str(root / "var/lib/linkseal/hub.db"), "--json"], capture_output=True,
                                        text=True, timeout=60)
        try:
            wait_for(lambda: json.loads(report().stdout)["links"].get("wifi", {}).get("valid") == 1, 60,
                     "the device's record at the hub")
        except AssertionError:
            raise AssertionError(report().stdout[-2000:] + (root / "linkseal-hub.log").read_text()[-3000:]) from None
        assert (work / "backup").is_dir() and "BROKEN" not in run.stdout
    finally:
        pid_file = root / "linkseal-hub.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), 9)
            except ProcessLookupError:
                pass
        subprocess.run(["pkill", "-f", f"{root}/etc/mosquitto/mosquitto.conf"], capture_output=True)
        deadline = time.monotonic() + 10
        while subprocess.run(["pgrep", "-f", str(root)], capture_output=True).returncode == 0:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        shutil.rmtree(root, ignore_errors=True)
