# machine for the virtual board: what the firmware uses of it.
import binascii

import _vdev


def unique_id():
    return binascii.unhexlify(_vdev.unique_id())


def reset():
    # The harness reboots the board (boot.py, then main.py) once this code has unwound.
    _vdev.reset(HARD_RESET)
    raise SystemExit


def reset_cause():
    return _vdev.reset_cause()


_pollers = []  # other background duties: the Bluetooth stand-in's IRQs (bluetooth.py)


def _poll():
    # What a real board does on its own, checked whenever the program sleeps, waits on the
    # network or feeds the watchdog: Ctrl-C on the console stops the program (mpremote
    # relies on it), and a starved watchdog resets the board.
    for poll in _pollers:
        poll()
    if _vdev.interrupted():
        raise KeyboardInterrupt
    if _vdev.wdt_expired():
        _vdev.reset(WDT_RESET)
        raise SystemExit


PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5


class WDT:
    def __init__(self, id=0, timeout=5000):
        _vdev.wdt_start(timeout)

    def feed(self):
        _vdev.wdt_feed()
        _poll()


_levels = {}  # output pins' levels


class Pin:
    IN = 0
    OUT = 1

    def __init__(self, id, mode=-1, value=None):
        self._id = id
        if value is not None:
            self.value(value)

    def value(self, level=None):
        if level is None:
            return _levels.get(self._id, 0)
        _levels[self._id] = 1 if level else 0


class UART:
    # A serial line to a peripheral (virtual_device.mjs --uart): the parts of machine.UART the
    # firmware's transports use. timeout (ms) bounds each read, as on a board. A UART wired to
    # an RS-485 transceiver (--rs485 ID=PIN) reaches the bus only while the transceiver's
    # driver-enable pin is high, as on the board: bytes written with it low are lost.
    def __init__(self, id, baudrate=115200, tx=None, rx=None, timeout=0, **kwargs):
        result = _vdev.uart_open(id)
        if result < 0:
            raise ValueError("UART(%d) doesn't exist" % id)
        self._id = id
        self._timeout = timeout
        self._de = _vdev.uart_de(id)

    def write(self, buf):
        if self._de >= 0 and not _levels.get(self._de):
            return len(buf)
        return _vdev.uart_write(self._id, binascii.hexlify(bytes(buf)).decode())

    def flush(self):
        pass  # uart_write returns once the line took every byte

    def read(self, n=256):
        _poll()
        data = _vdev.uart_read(self._id, n, self._timeout)
        return binascii.unhexlify(data) if data else None

    def readline(self):
        # Byte by byte up to a newline, as MicroPython's UART.readline; None if nothing came.
        line = b""
        while not line.endswith(b"\n"):
            _poll()
            data = _vdev.uart_read(self._id, 1, self._timeout)
            if not data:
                break
            line += binascii.unhexlify(data)
        return line or None

    def any(self):
        return 0
