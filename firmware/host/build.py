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

from firmware.device import epoch as epoch_file
from hardware.board_registry import Board, load_boards
from shared.device_config import load_device_config, write_private_json

from .board_files import (AGENT_CIPHER, AGENT_COMPACT, TRANSPORTS, agent_dir, agent_module_source, agent_modules,
                          agent_sources, device_dir, device_modules, device_sources)

AGENT_BUDGET = 6 * 1024  # bytes of .mpy for the agent core (the bar)
FIRMWARE_BUDGET = 16 * 1024  # bytes of .mpy for everything we ship, umqtt aside
CA_FILE = "ca.der"  # the broker's CA on the board: DER, which mbedTLS reads without a PEM parser


class BuildError(ValueError):
    """The build cannot go on; says why."""


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
    epoch_file.write(str(path), epoch)


def transport_of(settings: dict) -> str:
    """Which transport a build's agent.json sets up (app.py reads it the same way)."""
    return next((name for key, name in (("lorawan", "lorawan"), ("serial", "uart"), ("ble", "ble")) if key in settings),
                "mqtt")


def manifest_text(board: Board, transport: str = "mqtt", encrypt: bool = False, compact: bool = False) -> str:
    lines = [
        "# Freeze linkseal into a custom MicroPython image for board " + board.board + ":",
        f"#   make -C ports/{board.port} BOARD={board.board} FROZEN_MANIFEST=$PWD/manifest.py",
        'include("$(PORT_DIR)/boards/manifest.py")',
        'require("hmac")',
    ]
    if transport == "mqtt" and not board.freezes_umqtt_simple:
        lines.append('require("umqtt.simple")')
    # The agent core only: agent/linux is CPython code and must not be frozen.
    files = [name + ".py" for name in agent_modules(encrypt, compact)]
    lines.append(f'package("agent", files={files!r}, base_path="{agent_dir().parent}")')
    lines += [f'module("{name}.py", base_path="{device_dir()}")' for name in device_modules(transport)]
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


def lorawan_settings(board: Board, config: dict, heartbeat_s=300, record_interval_ms=60_000) -> dict:
    """agent.json for the lorawan transport: the board's modem and UART, the device's region's
    payload per data rate (the transport never sends a frame over it)."""
    from hardware.link_registry import load_links

    if board.lorawan is None:
        with_modem = ", ".join(name for name, b in load_boards().items() if b.lorawan) or "none"
        raise BuildError(f"--transport lorawan: board {board.name} has no LoRaWAN modem "
                         f"(boards with one: {with_modem})")
    if config["link"] != "lora" or "region" not in config:
        raise BuildError(f"device {config['device_id']}: provision it with --link lora and --region for LoRaWAN "
                         "(keys provision ... --link lora --form compact --region EU868 --dev-eui ...)")
    lora = load_links()["lora"]
    modem = board.lorawan
    return {"lorawan": {"uart": modem["uart"], "tx": modem["tx"], "rx": modem["rx"], "baud": modem["baud"],
                        "record_port": lora.ports[0], "status_port": lora.ports[1],
                        "limits": lora.payloads(config["region"])},
            "heartbeat_s": heartbeat_s, "record_interval_ms": record_interval_ms, "watchdog": board.watchdog,
            "max_rate": 0}  # the modem's duty cycle sets the pace: it answers busy until it may send


def serial_settings(board: Board, polled=False, baud=None, heartbeat_s=30, record_interval_ms=1000) -> dict:
    """agent.json for the uart transport: the board's UART to the relay and its transceiver's
    DE pin; polled on a multi-drop bus (the device speaks when the relay polls its id)."""
    if board.serial is None:
        wired = ", ".join(name for name, b in load_boards().items() if b.serial) or "none"
        raise BuildError(f"--transport uart: board {board.name} names no serial line (boards with one: {wired})")
    line = dict(board.serial, polled=polled)
    if baud:
        line["baud"] = baud
    return {"serial": line, "heartbeat_s": heartbeat_s, "record_interval_ms": record_interval_ms,
            "watchdog": board.watchdog, "held_retry_ms": 50}  # no ack came: the wait for it was the pause


def ble_settings(board: Board, heartbeat_s=30, record_interval_ms=1000) -> dict:
    """agent.json for the ble transport: the Nordic UART Service to the relay (relay ble)."""
    if not board.bluetooth:
        with_ble = ", ".join(name for name, b in load_boards().items() if b.bluetooth) or "none"
        raise BuildError(f"--transport ble: board {board.name} has no Bluetooth (boards with it: {with_ble})")
    return {"ble": {"ack_timeout_ms": 1000}, "heartbeat_s": heartbeat_s, "record_interval_ms": record_interval_ms,
            "watchdog": board.watchdog, "held_retry_ms": 50}


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
    encrypt = bool(config.get("encrypt"))
    if encrypt and not board.cryptolib:
        with_it = ", ".join(name for name, b in load_boards().items() if b.cryptolib) or "none"
        raise BuildError(f"device {config['device_id']} encrypts its records (keys provision --encrypt), but the "
                         f"stock MicroPython firmware of board {board.name} has no cryptolib (AES): pick a board "
                         f"whose firmware has it ({with_it})")
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    (out / "lib" / "agent").mkdir(parents=True)
    os.chmod(out, 0o700)  # it will hold the device key
    sizes = {"agent": 0, "cipher": 0, "firmware": 0}
    transport = transport_of(settings)
    settings = {**settings, "transport": TRANSPORTS[transport][0]}  # the module app.make_transport imports
    compact = config.get("form") == "compact"
    # The agent's optional modules ride beside the core: the cipher counted apart, the compact
    # status encoder with the firmware.
    cipher = agent_module_source(AGENT_CIPHER) if encrypt else {}
    compact_status = agent_module_source(AGENT_COMPACT) if compact else {}
    for part, sources in (("agent", agent_sources()), ("cipher", cipher), ("firmware", device_sources(transport)),
                          ("firmware", compact_status)):
        for board_path, source in sources.items():
            if board_path.startswith("lib/"):
                target = out / (board_path[:-3] + ".mpy")
                _mpy_cross(source, target, board_path[4:])
                sizes[part] += target.stat().st_size
            else:  # boot.py and main.py stay source: MicroPython runs them by name
                shutil.copyfile(source, out / board_path)
    sizes["firmware"] += sizes["agent"] + sizes["cipher"]
    for path in (out / "lib").rglob("*.mpy"):
        if mpy_major(path) != board.mpy_major:
            raise BuildError(f"{path}: .mpy version {mpy_major(path)}, but {board.name} loads {board.mpy_version}: "
                             "install an mpy-cross that matches the board's MicroPython")
    write_private_json(out / "device.json", config)
    write_private_json(out / "agent.json", settings)
    if ca_file:
        (out / CA_FILE).write_bytes(ca_der(ca_file))
    first_epoch_file(out / "epoch")
    (out / "manifest.py").write_text(manifest_text(board, transport, encrypt, compact))
    return sizes
