# machine for the virtual board: what the firmware uses of it.
import binascii

import _vdev


def unique_id():
    return binascii.unhexlify(_vdev.unique_id())


def reset():
    # The harness reboots the board (boot.py, then main.py) once this code has unwound.
    _vdev.reset()
    raise SystemExit


def reset_cause():
    return PWRON_RESET


PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5


class WDT:
    # The watchdog is checked whenever the board waits on the network (see socket.py); the
    # console is checked for Ctrl-C there and at every feed.
    def __init__(self, id=0, timeout=5000):
        _vdev.wdt_start(timeout)

    def feed(self):
        _vdev.wdt_feed()
        if _vdev.interrupted():  # Ctrl-C from the console (mpremote) stops the running program
            raise KeyboardInterrupt
