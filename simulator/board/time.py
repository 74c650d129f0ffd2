# time for the virtual board: MicroPython's own, with the board's background duties (Ctrl-C,
# watchdog; machine._poll) done whenever the program sleeps, as a real board does them
# in interrupts. The board's shim folder comes first on sys.path, so this module wins.
from utime import *  # noqa: F401,F403

import machine
import utime


def sleep_ms(ms):
    machine._poll()
    utime.sleep_ms(ms)


def sleep_us(us):
    machine._poll()
    utime.sleep_us(us)


def sleep(seconds):
    machine._poll()
    utime.sleep(seconds)
