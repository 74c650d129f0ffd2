"""The device modules in firmware/ (MicroPython code), loaded on CPython as well.

One implementation of the epoch file and the store-and-forward queue serves the boards,
the Linux agent (`agent run`) and the firmware build (the first epoch file).
"""

import importlib.util
from functools import lru_cache
from pathlib import Path

FIRMWARE_DIR = Path(__file__).resolve().parent.parent / "firmware"


@lru_cache(maxsize=None)
def firmware_module(name: str):
    """firmware/<name>.py as a module (firmware/ is a device filesystem, not a package)."""
    spec = importlib.util.spec_from_file_location(f"linkseal_firmware_{name}", FIRMWARE_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
