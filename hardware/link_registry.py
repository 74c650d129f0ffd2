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
    return Link(name=name, code=code, description=str(data.get("description", "")), mtu=mtu,
                burst=ge, sources=dict(data.get("sources", {})), compact_frames=compact,
                payload_limits={region: dict(rates) for region, rates in limits.items()}, **figures)


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
