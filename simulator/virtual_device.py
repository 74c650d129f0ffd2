"""A virtual MicroPython board on a pseudo-terminal, for tests and the simulator.

    with VirtualDevice(tmp_path / "board") as board:
        subprocess.run(["mpremote", "connect", board.port, "exec", "print(1)"])

The board is simulator/virtual_device.mjs (real MicroPython, WebAssembly, under Node); its
files live in `flash_dir` on the host and survive `power_cycle()` (a kill -9 and a fresh
start, as when a device loses power). What it prints is kept in `console_path`.
"""

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
import tty
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "virtual_device.mjs"
SHIMS = HERE / "board"  # machine, network, socket for the board, like frozen modules
BRIDGE = HERE / "tcp_bridge.py"
# Real MicroPython: npm's @micropython/micropython-webassembly-pyscript, installed by `make`.
RUNTIME = ROOT / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"


class MicroPythonError(RuntimeError):
    """The MicroPython runtime is missing, or the board did not do what was asked."""


def node_with_micropython() -> str:
    """The node executable, once sure the npm MicroPython runtime is installed; else raises."""
    node = shutil.which("node")
    if node is None:
        raise MicroPythonError("node is not on PATH: install Node.js 20 to run MicroPython")
    if not RUNTIME.exists():
        raise MicroPythonError(f"{RUNTIME} is missing: run `make test` (it runs `npm ci`)")
    return node


class VirtualDevice:
    def __init__(self, flash_dir: Path, unique_id: str = "0badc0de", heap_bytes: int = 128 * 1024, uarts=None,
                 rs485=None):
        """uarts: {UART id: path of a serial line} (a pseudo-terminal to a peripheral's emulator);
        rs485: {UART id: GPIO of its transceiver's driver-enable pin} for UARTs on an RS-485 bus."""
        self.flash_dir = Path(flash_dir)
        self.flash_dir.mkdir(parents=True, exist_ok=True)
        self.console_path = self.flash_dir.parent / (self.flash_dir.name + ".console.log")
        self.unique_id = unique_id
        self.heap_bytes = heap_bytes
        self.uarts = dict(uarts or {})
        self.rs485 = dict(rs485 or {})
        self.proc = None
        self._slave = None
        self.port = None

    def start(self) -> "VirtualDevice":
        node = node_with_micropython()
        master, slave = os.openpty()
        tty.setraw(slave)
        # The board never blocks on its console: with nobody reading, output is dropped as on a UART.
        fcntl.fcntl(master, fcntl.F_SETFL, fcntl.fcntl(master, fcntl.F_GETFL) | os.O_NONBLOCK)
        with open(self.console_path, "ab") as log:
            self.proc = subprocess.Popen(
                [node, str(SCRIPT), "--tty-fd", str(master), "--flash", str(self.flash_dir), "--shims", str(SHIMS),
                 "--bridge", str(BRIDGE), "--python", sys.executable, "--heap", str(self.heap_bytes),
                 "--unique-id", self.unique_id, "--uart", ",".join(f"{k}={v}" for k, v in self.uarts.items()),
                 "--rs485", ",".join(f"{k}={v}" for k, v in self.rs485.items())],
                pass_fds=(master,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT)
        os.close(master)
        # Holding the slave open keeps the console alive between mpremote sessions (no EIO).
        self._slave = slave
        self.port = os.ttyname(slave)
        return self

    def console(self) -> str:
        try:
            return self.console_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def wait_console(self, text: str, timeout: float = 60, count: int = 1) -> str:
        """Wait until the console has shown text `count` times; returns the console."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.console()
            if out.count(text) >= count:
                return out
            if self.proc.poll() is not None:
                raise MicroPythonError(f"the virtual device exited ({self.proc.returncode}); console:\n{out[-3000:]}")
            if time.monotonic() > deadline:
                raise MicroPythonError(f"the virtual device did not print {text!r} within {timeout} s; "
                                       f"console:\n{out[-3000:]}")
            time.sleep(0.05)  # polling the console file, the condition above is the synchronisation

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        if self._slave is not None:
            os.close(self._slave)
            self._slave = None

    def power_cycle(self) -> None:
        """Cut the power and switch on again: files stay, RAM and connections do not."""
        self.stop()
        self.start()

    def __enter__(self) -> "VirtualDevice":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
