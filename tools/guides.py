"""Guides in docs/ are scripts: their sh blocks run in order, in one shell, by a test."""

import os
import re
import subprocess
import sys
from pathlib import Path


def guide_blocks(guide: Path) -> list:
    """Every ```sh block of a guide, in order."""
    return re.findall(r"^```sh\n(.*?)^```", guide.read_text(), re.M | re.S)


def run_guide(blocks: list, settings: str, work: Path) -> subprocess.CompletedProcess:
    """The blocks in one bash (set -euo pipefail) in `work`, with the test's settings after the
    first block (the guide's own settings) and this checkout's linkseal; no LINKSEAL_ variable of
    the caller's environment leaks in."""
    overrides = f"LINKSEAL={Path(sys.executable).parent / 'linkseal'}\n" + settings
    script = "set -euo pipefail\n" + blocks[0] + overrides + "".join(blocks[1:])
    return subprocess.run(["bash", "-c", script], cwd=work, capture_output=True, text=True, timeout=600,
                          env={k: v for k, v in os.environ.items() if not k.startswith("LINKSEAL_")})
