"""`linkseal firmware build`: the agent and firmware compiled to .mpy for one device and board.

The build directory mirrors the device's filesystem: boot.py and main.py (source, as
MicroPython runs them), lib/agent/*.mpy and lib/*.mpy, device.json (0600, it holds the device
key), agent.json (0600: broker, WiFi, intervals), the first boot epoch, and a manifest.py
that freezes the same code into a custom MicroPython image for those who build their own.
An integrator's own records.py put next to main.py takes the place of lib/records.mpy
(the board's current directory comes first on sys.path).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from .boards import Board
from .device_code import FIRMWARE_DIR, firmware_module
from .keys import load_device_config, write_private_json

ROOT = Path(__file__).resolve().parent.parent
AGENT_MODULES = tuple(sorted(path.stem for path in (ROOT / "agent").glob("*.py")))
AGENT_BUDGET = 6 * 1024  # bytes of .mpy for the agent core (the bar)
FIRMWARE_BUDGET = 16 * 1024  # bytes of .mpy for everything we ship, umqtt aside
SOURCE_FILES = ("boot.py", "main.py")  # kept as source: MicroPython runs them by name
CA_FILE = "ca.der"  # the broker's CA on the board: DER, which mbedTLS reads without a PEM parser


class BuildError(ValueError):
    """The build cannot go on; says why."""


def firmware_modules() -> list:
    """Device modules compiled to .mpy (boot.py and main.py stay source, as MicroPython runs them)."""
    return sorted(p for p in FIRMWARE_DIR.glob("*.py") if p.name not in SOURCE_FILES)


def _mpy_cross(source: Path, target: Path, name: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    # -s: the name recorded in the .mpy, so tracebacks say frame.py and no build path leaks.
    result = subprocess.run([sys.executable, "-m", "mpy_cross", "-s", name, "-o", str(target), str(source)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"mpy-cross failed on {source}: {result.stderr.strip()}")


def mpy_major(path: Path) -> int:
    header = path.read_bytes()[:2]
    if header[:1] != b"M":
        raise BuildError(f"{path}: not a .mpy file")
    return header[1]


def first_epoch_file(path: Path, epoch: int = 0) -> None:
    """The device's epoch file, written by the firmware's own code (one format, one writer)."""
    firmware_module("epoch").write(str(path), epoch)


def manifest_text(board: Board) -> str:
    lines = [
        "# Freeze linkseal into a custom MicroPython image for board " + board.board + ":",
        f"#   make -C ports/{board.port} BOARD={board.board} FROZEN_MANIFEST=$PWD/manifest.py",
        'include("$(PORT_DIR)/boards/manifest.py")',
        'require("hmac")',
    ]
    if not board.freezes_umqtt_simple:
        lines.append('require("umqtt.simple")')
    lines.append(f'package("agent", base_path="{ROOT}")')
    lines += [f'module("{p.name}", base_path="{FIRMWARE_DIR}")' for p in firmware_modules()]
    return "\n".join(lines) + "\n"


def agent_settings(broker, board: Board, wifi_ssid=None, wifi_password=None, qos=1, heartbeat_s=30,
                   record_interval_ms=1000) -> dict:
    """agent.json: what the firmware's app.py needs beyond the device config."""
    if qos not in (0, 1):
        raise BuildError(f"--qos {qos}: umqtt.simple publishes at QoS 0 or 1")
    if broker.tls and not board.tls:
        raise BuildError(f"--broker {broker.host}: mqtts, but board {board.name} has no TLS")
    if wifi_ssid and "wifi" not in board.network:
        raise BuildError(f"--wifi-ssid: board {board.name} has no WiFi ({', '.join(board.network)})")
    settings = {"broker": {"host": broker.host, "port": broker.port, "tls": broker.tls}, "qos": qos,
                "heartbeat_s": heartbeat_s, "record_interval_ms": record_interval_ms, "watchdog": board.watchdog}
    if wifi_ssid:
        settings["wifi"] = {"ssid": wifi_ssid, "password": wifi_password or ""}
    if broker.ca_file:
        settings["broker"]["ca"] = CA_FILE
    return settings


def ca_der(path) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    data = Path(path).read_bytes()
    try:
        cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    except ValueError:
        raise BuildError(f"--ca-file {path}: not a PEM or DER certificate") from None
    return cert.public_bytes(Encoding.DER)


def build(device_json: Path, board: Board, out: Path, settings: dict, ca_file=None) -> dict:
    """Compile, copy and describe one device's build; returns the sizes in bytes.
    ca_file: the broker's CA certificate (PEM or DER), put on the board for TLS."""
    config = load_device_config(device_json)
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    (out / "lib" / "agent").mkdir(parents=True)
    os.chmod(out, 0o700)  # it will hold the device key
    sizes = {"agent": 0, "firmware": 0}
    for name in AGENT_MODULES:
        target = out / "lib" / "agent" / f"{name}.mpy"
        _mpy_cross(ROOT / "agent" / f"{name}.py", target, f"agent/{name}.py")
        sizes["agent"] += target.stat().st_size
    for source in firmware_modules():
        target = out / "lib" / f"{source.stem}.mpy"
        _mpy_cross(source, target, source.name)
        sizes["firmware"] += target.stat().st_size
    sizes["firmware"] += sizes["agent"]
    for path in (out / "lib").rglob("*.mpy"):
        if mpy_major(path) != board.mpy_major:
            raise BuildError(f"{path}: .mpy version {mpy_major(path)}, but {board.name} loads {board.mpy_version}: "
                             "install an mpy-cross that matches the board's MicroPython")
    for name in SOURCE_FILES:
        shutil.copyfile(FIRMWARE_DIR / name, out / name)
    write_private_json(out / "device.json", config)
    write_private_json(out / "agent.json", settings)
    if ca_file:
        (out / CA_FILE).write_bytes(ca_der(ca_file))
    first_epoch_file(out / "epoch")
    (out / "manifest.py").write_text(manifest_text(board))
    return sizes
