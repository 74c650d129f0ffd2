"""lorawan_ingest_ratio: frames/s that `hub run` verifies and commits when they arrive as
ChirpStack uplink events (`--lorawan chirpstack+mqtt://`, JSON made with `chirpstack-api`),
over the same frames on the plain broker path, in the same run (target >= 0.8).

Both hubs read one Mosquitto on loopback; each run is timed from the first publish to the
last frame committed. 2,000 compact LoRa devices, 10 frames each.
"""

import json
import tempfile
import time
from pathlib import Path

from agent import Sealer, topic_for
from hub.keys.keyfile import KeyFile
from simulator.lorawan.network import chirpstack_event, chirpstack_topic
from tools.services import HubProcess, Mosquitto, frames_seen, publish, wait_for

DEVICES = 2000
FRAMES_PER_DEVICE = 10


def traffic(keyfile):
    """(record topic, frame, ChirpStack event topic, event JSON) for every frame."""
    sealers = []
    for i in range(DEVICES):
        eui = f"{i:016x}"
        config = keyfile.provision(f"field-{i:05d}", "lora", form="compact", dev_eui=eui, save=False)
        sealers.append((eui, Sealer(config["device_id"], bytes.fromhex(config["key"]), link="lora", epoch=1,
                                    tag_len=8, compact=True)))
    keyfile.save()
    out = []
    for n in range(FRAMES_PER_DEVICE):
        for eui, sealer in sealers:
            frame = sealer.seal(b'{"soil": 33}')
            out.append((topic_for(sealer.device_id), frame, chirpstack_topic(eui),
                        chirpstack_event(eui, frame, n, gateways=(("gw-1", -100, 7.5),))))
    return out


def timed_run(broker, keyfile, messages, tmp, name, *extra) -> float:
    hub = HubProcess(broker, keyfile.path, tmp / f"{name}.db", tmp / f"{name}.log", *extra).start()
    try:
        hub.wait_connected()
        if extra:
            wait_for(lambda: any(e["event"] == "lorawan_subscribed" for e in hub.events()), 30, "the subscription")
        start = time.perf_counter()
        publish(broker.port, messages)
        wait_for(lambda: frames_seen(hub.db) >= len(messages), 300, f"the {name} hub to commit every frame")
        return len(messages) / (time.perf_counter() - start)
    finally:
        hub.stop()


def main():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        keyfile = KeyFile.create(tmp / "hub.keys")
        frames = traffic(keyfile)
        (tmp / "broker").mkdir()
        broker = Mosquitto(tmp / "broker").start_on_a_free_port()
        try:
            plain = timed_run(broker, keyfile, [(topic, frame) for topic, frame, _, _ in frames], tmp, "plain")
            lorawan = timed_run(broker, keyfile, [(topic, event) for _, _, topic, event in frames], tmp, "lorawan",
                                "--lorawan", f"chirpstack+mqtt://127.0.0.1:{broker.port}")
        finally:
            broker.stop()
    print(json.dumps({"figure": "lorawan_ingest_ratio", "value": round(lorawan / plain, 3), "target": ">= 0.8",
                      "lorawan_frames_per_s": round(lorawan), "broker_path_frames_per_s": round(plain),
                      "frames": len(frames), "devices": DEVICES, "event_format": "ChirpStack v4 JSON"}))
    print(json.dumps({"figure": "radio_state_bytes_per_lora_device", "value": radio_state_bytes(),
                      "target": "report", "note": "hub/core/radio.py RadioState after 200 uplinks heard by 3 "
                      "gateways at 3 spreading factors (kept beside the device's status; LoRaWAN devices only)"}))


def radio_state_bytes(devices: int = 1000) -> int:
    import random
    import tracemalloc

    from hub.core.radio import RECORD, RadioState

    rng = random.Random(1)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    states = []
    for device in range(devices):
        state = RadioState()
        for n in range(200):
            heard = [(f"gw-{g}", -100 - 5 * g - rng.randrange(5), round(rng.uniform(-10, 10), 1)) for g in range(3)]
            state.observe(RECORD, 1, n, n, heard, 7 + n % 3, "26011b01")
        states.append(state)
    grown = sum(stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    return round(grown / len(states))


if __name__ == "__main__":
    main()
