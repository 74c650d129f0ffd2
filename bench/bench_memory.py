"""Hub state bytes per device at 100k devices in steady state (target <= 1280).

Measured as the growth of the process's resident memory while the verifier is built and
every device's frames are verified, divided by the device count: it counts everything the
verifier holds (Python objects, keys, windows, counters, the bounded HMAC state cache and
the allocator's slack), not an estimate from sys.getsizeof; and the watch each verdict goes to
(hub/core/watch.py: liveness and behaviour), as in the hub.
"""

import gc
import json
import os

from agent import Sealer, topic_for
from hardware.link_registry import links_by_code
from hub.core.verifier import MAC_CACHE, DeviceKeys, Verifier
from hub.core.watch import Watch

DEVICES = 100_000
FRAMES_PER_DEVICE = 3


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main():
    names = {code: link.name for code, link in links_by_code().items()}
    ids = [f"ward{i // 1000:03d}-bed{i % 1000:03d}" for i in range(DEVICES)]
    keys = [os.urandom(32) for _ in ids]
    traffic = []
    for device, key in zip(ids, keys):
        sealer = Sealer(device, key, link="wifi", epoch=1)
        topic = topic_for(device)
        traffic += [(topic, sealer.seal(b"x" * 32)) for _ in range(FRAMES_PER_DEVICE)]
    gc.collect()
    before = rss_bytes()
    # Fresh copies of the keys, so that the verifier's own key bytes are counted.
    verifier = Verifier([DeviceKeys(d, {0: bytes(bytearray(k))}, "wifi") for d, k in zip(ids, keys)], names)
    # Heard within their heartbeat period (an hour here): steady state, nobody silent. (A silent
    # device gets a status entry for its liveness, as devices that send births have anyway.)
    watch = Watch(verifier.record_event, verifier.status, heartbeat_s={"default": 3600.0})
    gc.collect()
    for n, (topic, data) in enumerate(traffic):
        t = n * 0.001
        watch.tick(t)
        watch.observe(verifier.verify(topic, data, t), t)
    watch.tick(600.0)  # two behaviour windows closed: every device judged and learning
    assert not verifier.events and not watch.silent
    gc.collect()
    per_device = (rss_bytes() - before) / DEVICES
    assert sum(1 for _ in verifier.devices()) == DEVICES
    print(json.dumps({"figure": "hub_state_bytes_per_device", "value": round(per_device), "target": "<= 1280",
                      "devices": DEVICES, "includes_mac_cache_of": MAC_CACHE, "includes": "liveness and behaviour"}))


if __name__ == "__main__":
    main()
