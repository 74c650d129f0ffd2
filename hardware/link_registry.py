"""The link registry: hardware/links/*.toml, loaded once for the hub and the simulator.

Each file describes one physical link type: its wire code, frame size limit (mtu) and
the error figures we expect from it. The agent cannot read TOML on a device, so the
wire codes reach it as the generated module agent/link_codes.py (`make link-codes`).
"""

import os
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from agent import frame

from . import data_dir

LINKS_DIR = Path(os.environ.get("LINKSEAL_LINKS_DIR") or data_dir("links"))
# `make link-codes` writes it in the source tree (the generator is a development step).
AGENT_MODULE = Path(__file__).resolve().parent.parent / "agent" / "link_codes.py"

_EXPECTED = ("frame_loss", "corrupt", "ber", "duplicate", "reorder", "delay_ms", "jitter_ms")
_BURST = ("p", "r", "one_minus_h", "one_minus_k")


class RegistryError(ValueError):
    """A link file is missing a field or holds a value that cannot be right."""


@dataclass(frozen=True)
class Burst:
    """Gilbert-Elliott parameters in netem's `gemodel p r 1-h 1-k` convention."""

    p: float
    r: float
    one_minus_h: float
    one_minus_k: float

    def stationary_loss(self) -> float:
        bad = self.p / (self.p + self.r)
        return bad * self.one_minus_h + (1 - bad) * self.one_minus_k


@dataclass(frozen=True)
class Link:
    name: str
    code: int
    description: str
    mtu: int
    frame_loss: float
    corrupt: float
    ber: float
    duplicate: float
    reorder: float
    delay_ms: float
    jitter_ms: float
    burst: Burst
    sources: dict
    # The link's own integrity check drops every damaged frame before the hub (LoRaWAN's MIC):
    # its devices may seal in the compact form, without a CRC (agent/frame.py).
    compact_frames: bool = False
    payload_limits: dict = None  # region -> data rate -> largest application payload (LoRaWAN)
    data_rates: dict = None  # region -> data rate -> (spreading factor, bandwidth kHz)
    duty_cycle: dict = None  # region -> share of time a device may transmit (0: no duty cycle)
    ports: tuple = None  # (records, status messages): LoRaWAN fPorts

    def payloads(self, region: str) -> list:
        """The region's largest application payload per data rate, indexed by its number
        (DR0 first): what a LoRaWAN modem is told (AT+DR) and the firmware checks against."""
        return [self.payload_limits[region][f"DR{n}"] for n in range(len(self.payload_limits[region]))]

    def modulations(self, region: str) -> list:
        """(spreading factor, bandwidth kHz) per data rate, indexed as payloads()."""
        return [self.data_rates[region][f"DR{n}"] for n in range(len(self.data_rates[region]))]

    @property
    def max_payload(self) -> int:
        """Largest payload that fits the mtu whatever the header, tag and timestamp."""
        return self.mtu - frame.MAX_OVERHEAD


def _number(path, table, key, low, high):
    value = table.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise RegistryError(f"{path}: {key} must be a number in [{low}, {high}], got {value!r}")
    return float(value)


def load_link(path: Path) -> Link:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RegistryError(f"{path}: {exc}") from None
    name, code, mtu = data.get("name"), data.get("code"), data.get("mtu")
    if name != path.stem:
        raise RegistryError(f"{path}: name {name!r} must match the file name")
    if not isinstance(code, int) or not 1 <= code <= 255:
        raise RegistryError(f"{path}: code must be an integer 1..255")
    if not isinstance(mtu, int) or mtu <= frame.MAX_OVERHEAD:
        raise RegistryError(f"{path}: mtu must be an integer above {frame.MAX_OVERHEAD}")
    expected, burst = data.get("expected", {}), data.get("burst", {})
    figures = {key: _number(path, expected, key, 0.0, 1.0 if "ms" not in key else 1e6) for key in _EXPECTED}
    ge = Burst(*(_number(path, burst, key, 0.0, 1.0) for key in _BURST))
    if ge.p + ge.r == 0:
        raise RegistryError(f"{path}: burst p and r cannot both be 0")
    compact = data.get("compact_frames", False)
    if not isinstance(compact, bool):
        raise RegistryError(f"{path}: compact_frames must be true or false")
    limits = data.get("payload_limits", {})
    if not isinstance(limits, dict) or not all(
            isinstance(rates, dict) and rates and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= mtu
                                                      for v in rates.values()) for rates in limits.values()):
        raise RegistryError(f"{path}: payload_limits must be tables of region -> data rate -> bytes (1..mtu)")
    rates = data.get("data_rates", {})
    if not isinstance(rates, dict) or not all(
            isinstance(table, dict) and set(table) == set(limits.get(region, ())) and all(
                isinstance(v, list) and len(v) == 2 and 6 <= v[0] <= 12 and v[1] in (125, 250, 500)
                for v in table.values()) for region, table in rates.items()):
        raise RegistryError(f"{path}: data_rates must give [spreading factor 6..12, bandwidth 125/250/500 kHz] "
                            "for every data rate of payload_limits")
    duty = data.get("duty_cycle", {})
    if not isinstance(duty, dict) or not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in duty.values()):
        raise RegistryError(f"{path}: duty_cycle must map regions to shares 0..1")
    ports = (data.get("record_port"), data.get("status_port")) if "record_port" in data else None
    if ports is not None and not (all(isinstance(v, int) and 1 <= v <= 223 for v in ports) and ports[0] != ports[1]):
        raise RegistryError(f"{path}: record_port and status_port must be two LoRaWAN fPorts 1..223")
    return Link(name=name, code=code, description=str(data.get("description", "")), mtu=mtu, ports=ports,
                burst=ge, sources=dict(data.get("sources", {})), compact_frames=compact,
                payload_limits={region: dict(rates) for region, rates in limits.items()},
                data_rates={region: {dr: tuple(v) for dr, v in table.items()} for region, table in rates.items()},
                duty_cycle={region: float(v) for region, v in duty.items()}, **figures)


LORAWAN_OVERHEAD = 13  # MHDR 1, FHDR 7 (no FOpts), FPort 1, MIC 4: added to the application payload


def lora_airtime_s(payload: int, spreading_factor: int, bandwidth_khz: int = 125, coding_rate: int = 1,
                   preamble: int = 8) -> float:
    """Time on air of one LoRaWAN uplink carrying `payload` application bytes (Semtech
    AN1200.13; explicit header, CRC on, low data rate optimisation when a symbol lasts over
    16 ms, coding rate 4/(4 + coding_rate))."""
    symbol = (1 << spreading_factor) / (bandwidth_khz * 1000.0)
    low_rate = 1 if symbol > 0.016 else 0
    bits = 8 * (payload + LORAWAN_OVERHEAD) - 4 * spreading_factor + 28 + 16
    symbols = 8 + max(-(-bits // (4 * (spreading_factor - 2 * low_rate))) * (coding_rate + 4), 0)
    return (preamble + 4.25) * symbol + symbols * symbol


@lru_cache(maxsize=None)
def load_links(directory: Path = LINKS_DIR) -> dict[str, Link]:
    """All links by name; raises RegistryError on a bad file or a reused code."""
    links = {}
    by_code = {}
    for path in sorted(Path(directory).glob("*.toml")):
        link = load_link(path)
        if link.code in by_code:
            raise RegistryError(f"{path}: code {link.code} is already used by {by_code[link.code]}")
        by_code[link.code] = link.name
        links[link.name] = link
    if not links:
        raise RegistryError(f"{directory}: no link files found")
    return links


def links_by_code(directory: Path = LINKS_DIR) -> dict[int, Link]:
    return {link.code: link for link in load_links(directory).values()}


def render_agent_module(links: dict[str, Link]) -> str:
    """Source of agent/link_codes.py: link name -> (wire code, max payload bytes)."""
    lines = [
        "# Generated from hardware/links/*.toml by `make link-codes`; do not edit.",
        "# name: (wire code, largest payload a frame on this link may carry)",
        "LINKS = {",
    ]
    for link in sorted(links.values(), key=lambda item: item.code):
        lines.append(f'    "{link.name}": ({link.code}, {link.max_payload}),')
    lines.append("}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    AGENT_MODULE.write_text(render_agent_module(load_links()))
    print(f"wrote {AGENT_MODULE}")
