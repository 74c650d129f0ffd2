"""The wheel works when installed, as an operator installs it: built from the tree, installed
into a fresh virtual environment outside it, and run from another directory, with the link
registry, the board files and the firmware sources found inside the installed package."""

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(linkseal executable, its python, a working directory far from the source tree)."""
    base = tmp_path_factory.mktemp("wheel")
    wheels = base / "wheels"
    # Built from a copy: setuptools leaves build/ and *.egg-info behind in the tree it builds.
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "node_modules", ".cache", "build",
                                                                "*.egg-info", "__pycache__", ".pytest_cache"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--quiet", "-w",
                             str(wheels)], capture_output=True, text=True)
    assert result.returncode == 0, f"pip wheel failed:\n{result.stderr}"
    (wheel,) = wheels.glob("linkseal-*.whl")
    venv.create(base / "venv", with_pip=True)
    python = base / "venv" / "bin" / "python"
    result = subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(wheel)], capture_output=True,
                            text=True)
    assert result.returncode == 0, f"installing the wheel failed:\n{result.stderr}"
    work = base / "elsewhere"
    work.mkdir()
    return base / "venv" / "bin" / "linkseal", python, work, wheel


def run(installed, *args, stdin=None):
    linkseal, _, work, _ = installed
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["LINKSEAL_PASSPHRASE_FILE"] = str(work / "passphrase")
    result = subprocess.run([str(linkseal), *map(str, args)], cwd=work, env=env, input=stdin, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, f"linkseal {' '.join(map(str, args))}: exit {result.returncode}\n{result.stderr}"
    return result.stdout


def test_the_wheel_carries_the_data_and_no_test_tooling(installed):
    names = set(zipfile.ZipFile(installed[3]).namelist())
    for needed in ("hardware/links/wifi.toml", "hardware/boards/esp32.toml", "firmware/device/app.py",
                   "firmware/device/main.py", "agent/frame.py", "linkseal/__main__.py",
                   "hub/deploy/linkseal-hub.service", "relay/deploy/linkseal-relay.service", "relay/intake.py",
                   "firmware/device/serial_link.py", "simulator/virtual_device.mjs", "simulator/board/machine.py",
                   "hub/service/console/static/index.html", "hub/service/console/static/app.js",
                   "hub/service/console/static/openapi.json", "hub/service/console/static/vendor/uPlot.iife.min.js"):
        assert needed in names, f"the wheel lacks {needed}"
    assert not {name for name in names if name.split("/")[0] in ("tests", "tools", "bench")}


def test_installed_commands_run_from_another_directory(installed):
    _, python, work, _ = installed
    (work / "passphrase").write_text("correct horse battery staple\n")
    (work / "passphrase").chmod(0o600)
    version = run(installed, "--version").split()
    assert version[0] == "linkseal" and version[1] == json.loads(subprocess.run(
        [str(python), "-c", "import importlib.metadata, json; print(json.dumps(importlib.metadata.version('linkseal')))"],
        capture_output=True, text=True, cwd=work).stdout)
    where = subprocess.run([str(python), "-c", "import hardware, hub, firmware; print(hardware.__file__)"],
                           capture_output=True, text=True, cwd=work).stdout
    assert str(ROOT) not in where and "site-packages" in where, where

    run(installed, "keys", "init", "--out", "hub.keys")
    run(installed, "keys", "provision", "d1", "--keys", "hub.keys", "--link", "wifi", "--out", "d1.json")
    capture = run(installed, "agent", "seal", "--device", "d1.json", "--epoch", "1", stdin="hr=71\nhr=72\nhr=73\n")
    (work / "capture.jsonl").write_text(capture)
    report = json.loads(run(installed, "hub", "verify", "capture.jsonl", "--keys", "hub.keys", "--json"))
    assert report["links"]["wifi"]["received"] == 3 and report["links"]["wifi"]["valid"] == 3

    built = run(installed, "firmware", "build", "--device", "d1.json", "--board", "esp32", "--broker",
                "mqtt://broker.lan", "--out", "build")
    assert "built build for esp32" in built
    assert (work / "build" / "lib" / "agent" / "frame.mpy").is_file() and (work / "build" / "main.py").is_file()

    run(installed, "sim", "run", "--no-broker", "--links", "wifi,lora", "--devices", "4", "--duration", "5",
        "--out", "sim-out")
    assert set(json.loads((work / "sim-out" / "report.json").read_text())["hub"]["links"]) == {"wifi", "lora"}
    assert "linkseal demo" in run(installed, "demo", "--help")
    assert "--poll" in run(installed, "relay", "serial", "--help")
