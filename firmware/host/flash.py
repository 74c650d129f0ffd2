"""`linkseal firmware flash`: copy a build onto a board with mpremote, check it, reset it.

- Every file of the build goes to the same path on the board, except `epoch`: a board that
  already has an epoch keeps it (writing the build's epoch 0 over it would let sequence
  numbers repeat under the same key).
- umqtt.simple is installed when the build speaks MQTT and the board lacks it: from a micropython-lib checkout (or
  any folder holding umqtt/simple.py) given with --micropython-lib, else `mpremote mip
  install umqtt.simple` (the host then needs to reach micropython.org).
- --verify compares each file's SHA-256 on the board with the build's; only file names and
  the verdict are shown, never contents (device.json holds the key).
"""

import hashlib
import subprocess
import sys
from pathlib import Path

SKIP = ("manifest.py",)  # for custom firmware images, not for the board's filesystem
EPOCH = "epoch"
UMQTT = "umqtt/simple.py"


class FlashError(ValueError):
    """The board could not be flashed; says which step failed."""


def _mpremote(port: str, *args: str, timeout: float = 180) -> str:
    command = [sys.executable, "-m", "mpremote", "connect", port, *args]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise FlashError(f"mpremote on {port} did not finish within {timeout:.0f} s") from None
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise FlashError(f"mpremote on {port} failed: {lines[-1] if lines else 'exit status %d' % result.returncode}")
    return result.stdout


def _exec(port: str, code: str) -> str:
    return _mpremote(port, "exec", code)


def build_files(build_dir: Path) -> list:
    """(local path, board path) for every file to copy, directories first in order."""
    build_dir = Path(build_dir)
    if not (build_dir / "device.json").is_file() or not (build_dir / "main.py").is_file():
        raise FlashError(f"{build_dir}: not a build directory (run `linkseal firmware build` first)")
    return [(path, path.relative_to(build_dir).as_posix()) for path in sorted(build_dir.rglob("*"))
            if path.is_file() and path.name not in SKIP]


def find_umqtt(micropython_lib: Path) -> Path:
    """umqtt/simple.py inside a micropython-lib checkout or an unpacked PyPI archive."""
    found = sorted(Path(micropython_lib).rglob(UMQTT))
    if not found:
        raise FlashError(f"--micropython-lib {micropython_lib}: no {UMQTT} in it")
    return found[0]


def _board_has(port: str, names) -> set:
    listing = _exec(port, "import os\nfor n in %r:\n  try:\n    os.stat(n); print('HAS', n)\n  except OSError:\n"
                          "    pass\ntry:\n  import umqtt.simple; print('HAS umqtt')\nexcept ImportError:\n  pass"
                    % (list(names),))
    return {line[4:] for line in listing.splitlines() if line.startswith("HAS ")}


def flash(port: str, build_dir: Path, verify: bool = False, micropython_lib: Path | None = None, say=print) -> None:
    files = build_files(build_dir)
    umqtt = find_umqtt(micropython_lib) if micropython_lib else None  # checked before touching the board
    present = _board_has(port, [EPOCH])
    if EPOCH in present:
        files = [(local, remote) for local, remote in files if remote != EPOCH]
        say("the board keeps its boot epoch (never written back)")
    needs_umqtt = any(remote == "lib/transport.mpy" for _, remote in files)  # a LoRaWAN build has no MQTT
    if needs_umqtt and "umqtt" not in present:
        if umqtt is not None:
            files.append((umqtt, "lib/" + UMQTT))
            say(f"umqtt.simple: from {umqtt}")
        else:
            say("umqtt.simple: mpremote mip install umqtt.simple")
            _mpremote(port, "mip", "install", "umqtt.simple")
    folders = sorted({str(Path(remote).parent) for _, remote in files} - {"."})
    _exec(port, "import os\nfor d in %r:\n  try:\n    os.mkdir(d)\n  except OSError:\n    pass" % (folders,))
    copy = []
    for local, remote in files:
        copy += ["fs", "cp", str(local), ":" + remote, "+"]
    _mpremote(port, *copy[:-1])
    say(f"copied {len(files)} files ({sum(local.stat().st_size for local, _ in files)} bytes)")
    if verify:
        check_hashes(port, files)
        say(f"verified {len(files)} files (SHA-256)")
    _mpremote(port, "reset")
    say(f"reset the board on {port}")


def check_hashes(port: str, files) -> None:
    code = ("import hashlib, binascii\nfor n in %r:\n  h = hashlib.sha256()\n  f = open(n, 'rb')\n  while True:\n"
            "    b = f.read(512)\n    if not b:\n      break\n    h.update(b)\n  f.close()\n"
            "  print(n, binascii.hexlify(h.digest()).decode())" % ([remote for _, remote in files],))
    on_board = dict(line.split() for line in _exec(port, code).splitlines() if line.strip())
    for local, remote in files:
        if on_board.get(remote) != hashlib.sha256(local.read_bytes()).hexdigest():
            raise FlashError(f"{remote}: the copy on the board differs from the build (SHA-256)")
