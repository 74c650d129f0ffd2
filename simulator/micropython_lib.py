"""Fetch micropython-lib's umqtt.simple for the virtual device (`make test` runs this).

micropython-lib is not vendored here. Its PyPI uploads are old upip source archives that
pip refuses to install ("does not appear to be a Python project"), but `pip download
--no-clean` leaves the unpacked archive in pip's temporary folder: we take
umqtt/simple.py from there into .cache/micropython-lib/, laid out like the archive, so
that `linkseal firmware flash --micropython-lib .cache/micropython-lib` finds it.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / ".cache" / "micropython-lib"
UMQTT = LIB / "umqtt" / "simple.py"
PACKAGE = "micropython-umqtt.simple==1.3.4"


def fetch() -> Path:
    if UMQTT.exists():
        return UMQTT
    with tempfile.TemporaryDirectory() as work:
        env = {**os.environ, "TMPDIR": work}
        result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-clean", "--no-binary",
                                 ":all:", "-d", str(Path(work) / "out"), PACKAGE], capture_output=True, text=True,
                                env=env)
        found = sorted(Path(work).rglob("umqtt/simple.py"))
        if not found:
            raise SystemExit(f"could not fetch {PACKAGE} from PyPI:\n{result.stderr.strip()}")
        UMQTT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(found[0], UMQTT)
    return UMQTT


def install(flash_dir) -> None:
    """Put umqtt.simple in a virtual board's flash folder, where `linkseal firmware flash` puts it."""
    target = Path(flash_dir) / "lib" / "umqtt" / "simple.py"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(fetch(), target)


if __name__ == "__main__":
    print(fetch())
