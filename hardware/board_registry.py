"""Board files (hardware/boards/*.toml): what the firmware build needs to know of each board."""

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from . import data_dir

BOARDS_DIR = data_dir("boards")
_FIELDS = {"name": str, "description": str, "port": str, "board": str, "ram_kib": int, "flash_mib": int,
           "network": list, "watchdog": bool, "tls": bool, "freezes_umqtt_simple": bool, "mpy_version": str,
           "min_micropython": str}
# A board with a LoRaWAN modem names it and its UART in a [lorawan] table (the firmware's lorawan transport).
_MODEM_FIELDS = {"modem": str, "command_set": str, "uart": int, "tx": int, "rx": int, "baud": int}
# A board wired to a serial line (RS-485 through a transceiver, or a plain UART) to the relay on a
# gateway names the UART in a [serial] table (the firmware's uart transport); `de` is the
# transceiver's driver-enable pin, absent for a point-to-point UART.
_SERIAL_FIELDS = {"uart": int, "tx": int, "rx": int, "baud": int}


class BoardError(ValueError):
    """A board file that is missing a field or an unknown board name."""


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    port: str
    board: str
    ram_kib: int
    flash_mib: int
    network: list
    watchdog: bool
    tls: bool
    freezes_umqtt_simple: bool
    mpy_version: str
    min_micropython: str
    lorawan: dict | None = None
    serial: dict | None = None
    bluetooth: bool = False
    cryptolib: bool = False  # its stock firmware has cryptolib's AES (ECB), which record encryption needs

    @property
    def mpy_major(self) -> int:
        return int(self.mpy_version.split(".")[0])


@lru_cache(maxsize=None)
def load_boards(directory: Path = BOARDS_DIR) -> dict:
    boards = {}
    for path in sorted(Path(directory).glob("*.toml")):
        found = read_board(path)
        boards[found.name] = found
    return boards


def read_board(path: Path) -> Board:
    """One board file, checked; BoardError naming the file and the field that is wrong."""
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise BoardError(f"{path}: not valid TOML ({exc})") from None
    _check_fields(path, "", data, _FIELDS)
    if data["name"] != path.stem:
        raise BoardError(f"{path}: name {data['name']!r} must match the file name")
    modem = data.get("lorawan")
    if modem is not None:
        _check_fields(path, "lorawan.", modem, _MODEM_FIELDS)
        if modem["command_set"] != "RUI3":
            raise BoardError(f"{path}: lorawan.command_set: the firmware speaks RUI3 only")
    line = data.get("serial")
    if line is not None:
        _check_fields(path, "serial.", line, _SERIAL_FIELDS)
        if not isinstance(line.get("de", 0), int):
            raise BoardError(f"{path}: serial.de must be a pin number")
    for flag in ("bluetooth", "cryptolib"):
        if not isinstance(data.get(flag, False), bool):
            raise BoardError(f"{path}: {flag} must be true or false")
    return Board(**{field: data[field] for field in _FIELDS}, lorawan=modem, serial=line,
                 bluetooth=data.get("bluetooth", False), cryptolib=data.get("cryptolib", False))


def _check_fields(path: Path, prefix: str, table: dict, fields: dict) -> None:
    for field, kind in fields.items():
        if not isinstance(table.get(field), kind):
            raise BoardError(f"{path}: {prefix}{field} must be a {kind.__name__}")


def board(name: str) -> Board:
    """A board by name (hardware/boards), or an integrator's own board file (a path to .toml)."""
    if name.endswith(".toml"):
        path = Path(name)
        if not path.is_file():
            raise BoardError(f"board file {name}: no such file")
        return read_board(path)
    boards = load_boards()
    if name not in boards:
        raise BoardError(f"unknown board {name!r}; known: {', '.join(sorted(boards))}")
    return boards[name]
