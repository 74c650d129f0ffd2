# The record source: replace this module with your device's own (same name, same function).
#
# read() returns the next record as bytes, or None when there is none right now. The agent
# calls it every `record_interval_ms` (agent.json), seals what it returns and queues it, so
# read() should return quickly. A record must fit the link's payload limit (hardware/links);
# a longer one is refused, counted and reported on the console.
#
# This default produces a small demo reading: a counter and the uptime.
import time

_count = 0


def read():
    global _count
    _count += 1
    return ('{"n":%d,"uptime_ms":%d}' % (_count, time.ticks_ms())).encode()
