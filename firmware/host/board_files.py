"""What goes onto a board: the one list.

`linkseal firmware build` compiles exactly these files, the virtual board is flashed with
that build, and the MicroPython test runner (tools/micropython.py) installs the same agent
files; tests/test_layout.py checks that nothing CPython-only is among them or imported by them.

- the agent core: agent/<name>.py -> /lib/agent/<name>.mpy
- the device application: firmware/device/<name>.py -> /lib/<name>.mpy
- the two scripts MicroPython runs by name, kept as source: firmware/device/boot.py, main.py -> /
Everything else under agent/ (agent/linux: the Linux agent) and firmware/ (the build and
flash tooling) is CPython-only and never reaches a board.
"""

from importlib import resources
from pathlib import Path

AGENT_CORE = ("__init__", "frame", "link_codes", "sealer", "status")
# Record encryption (agent/cipher.py): on the board only for a device provisioned with --encrypt.
AGENT_CIPHER = "cipher"
# The compact status encoder (agent/compact_status.py): only for devices in the compact form.
AGENT_COMPACT = "compact_status"
DEVICE_MODULES = ("app", "epoch", "records", "sealmark", "store")
# One transport per build: what the device needs and no more (the firmware's size budget).
# Each: the modules it needs, the first the one app.make_transport imports (named in agent.json).
TRANSPORTS = {"mqtt": ("transport",), "lorawan": ("lorawan",), "uart": ("uart_link", "serial_link"),
              "ble": ("ble_link", "serial_link")}
DEVICE_SCRIPTS = ("boot", "main")
# What a board's MicroPython offers the modules above (GUIDE: MicroPython rules), besides each other.
BOARD_LIBRARIES = ("binascii", "bluetooth", "cryptolib", "gc", "hashlib", "json", "machine", "micropython",
                   "network", "os", "random", "ssl", "struct", "time", "umqtt.simple")


def _package_dir(package: str) -> Path:
    # A wheel installs into a plain directory, so the package's files are real files.
    return Path(str(resources.files(package)))


def agent_dir() -> Path:
    return _package_dir("agent")


def device_dir() -> Path:
    return _package_dir("firmware.device")


def agent_modules(encrypt: bool = False, compact: bool = False) -> tuple:
    return AGENT_CORE + ((AGENT_CIPHER,) if encrypt else ()) + ((AGENT_COMPACT,) if compact else ())


def agent_module_source(name: str) -> dict:
    """Board path -> source file of one agent module."""
    return {f"lib/agent/{name}.py": agent_dir() / f"{name}.py"}


def agent_sources(encrypt: bool = False, compact: bool = False) -> dict:
    """Board path -> source file of the agent core (with the cipher for a device that encrypts,
    the compact status encoder for a device in the compact form)."""
    sources = {}
    for name in agent_modules(encrypt, compact):
        sources.update(agent_module_source(name))
    return sources


def device_modules(transport: str | None = None) -> tuple:
    """The device application's modules with one transport, or with every one (None)."""
    if transport is not None:
        return DEVICE_MODULES + TRANSPORTS[transport]
    return DEVICE_MODULES + tuple(dict.fromkeys(name for names in TRANSPORTS.values() for name in names))


def device_sources(transport: str | None = None) -> dict:
    """Board path -> source file of the device application (modules, then the two scripts),
    with one transport or every one (None)."""
    files = {f"lib/{name}.py": device_dir() / f"{name}.py" for name in device_modules(transport)}
    files.update({f"{name}.py": device_dir() / f"{name}.py" for name in DEVICE_SCRIPTS})
    return files


def board_sources(transport: str | None = None, encrypt: bool = False, compact: bool = False) -> dict:
    """Every source file that goes onto a board, by its path there (before compiling to .mpy)."""
    return {**agent_sources(encrypt, compact), **device_sources(transport)}
