"""Writes the v1 test vectors. Run once when the format is designed; after that the files
are frozen: the tests check every implementation against them, never regenerate them.

    .venv/bin/python tests/vectors/generate.py
"""

import json
from pathlib import Path

from agent import Sealer, topic_for
from agent import frame as wire
from hub.keys.keyfile import derive_device_key

HERE = Path(__file__).resolve().parent
KEY16 = bytes(range(16))
KEY32 = bytes(range(0x20, 0x40))
KEY80 = bytes(range(0x80, 0xD0))  # longer than a SHA-256 block: HMAC hashes it first
LONG_ID = "Pump-07.ward_3:icu-" + "x" * 45  # 64 bytes, every kind of allowed character

FRAMES = [
    # name, device id, key, key id, link, tag len, epoch, seq, timestamp ms, payload
    ("empty payload, first frame", "pump-1", KEY32, 0, "wifi", 16, 0, 0, None, b""),
    ("8-byte tag", "pump-1", KEY32, 0, "wifi", 8, 1, 1, None, b"hr=71"),
    ("32-byte tag", "pump-1", KEY32, 0, "wifi", 32, 1, 2, None, b"hr=72"),
    ("device timestamp", "monitor-2", KEY32, 3, "ble", 16, 7, 300, 1795000000123, b'{"spo2":97}'),
    ("overhead bound, 8-byte tag", "sensor-9", KEY16, 1, "lora", 8, 2**14 - 1, 2**21 - 1, None, b"\x00\x01"),
    ("overhead bound, 16-byte tag", "sensor-9", KEY16, 1, "lora", 16, 2**14 - 1, 2**21 - 1, None, b"\x00\x01"),
    ("largest epoch and seq", "plc-4", KEY32, 255, "rs485", 16, 2**32 - 1, 2**32 - 1, 2**53 - 1, b"\xff" * 8),
    ("long key is hashed", "plc-4", KEY80, 0, "fiber", 16, 5, 128, None, b"coil=1"),
    ("payload at the lora limit", "sensor-9", KEY16, 1, "lora", 16, 1, 16383, None, bytes(range(165))),
    ("64-byte device id", LONG_ID, KEY32, 0, "cellular", 16, 3, 2**14, None, b"ok"),
]


def frame_vectors():
    out = []
    for name, device, key, key_id, link, tag_len, epoch, seq, stamp, payload in FRAMES:
        sealer = Sealer(device, key, key_id=key_id, link=link, epoch=epoch, tag_len=tag_len)
        sealer.seq = seq
        data = sealer.seal(payload, stamp)
        out.append({"name": name, "device_id": device, "key": key.hex(), "key_id": key_id, "link": link,
                    "tag_len": tag_len, "epoch": epoch, "seq": seq, "timestamp_ms": stamp,
                    "payload": payload.hex(), "frame": data.hex()})
    return out


COMPACT_FRAMES = [
    # name, device id, key, key id, tag len, epoch, seq, timestamp ms, payload (link: lora)
    ("compact, first frame", "sensor-9", KEY16, 0, 8, 0, 0, None, b""),
    ("compact overhead bound, 8-byte tag", "sensor-9", KEY16, 1, 8, 127, 2**14 - 1, None, b"t=21.5"),
    ("compact, 16-byte tag", "sensor-9", KEY32, 2, 16, 3, 200, None, b"\x01\x02\x03"),
    ("compact, device timestamp", "field-tx-3", KEY32, 0, 8, 9, 5, 1795000000123, b"soil=33"),
    ("compact, 38 bytes in a 51-byte uplink", "field-tx-3", KEY32, 0, 8, 1, 300, None, bytes(range(38))),
]


def compact_vectors():
    """The compact form (no link code, no CRC, MAC domains of its own): records and a status message."""
    out = []
    for name, device, key, key_id, tag_len, epoch, seq, stamp, payload in COMPACT_FRAMES:
        sealer = Sealer(device, key, key_id=key_id, link="lora", epoch=epoch, tag_len=tag_len, compact=True)
        sealer.seq = seq
        data = sealer.seal(payload, stamp)
        out.append({"name": name, "device_id": device, "key": key.hex(), "key_id": key_id, "link": "lora",
                    "tag_len": tag_len, "epoch": epoch, "seq": seq, "timestamp_ms": stamp, "payload": payload.hex(),
                    "status": False, "frame": data.hex()})
    sealer = Sealer("sensor-9", KEY16, link="lora", epoch=4, tag_len=8, compact=True)
    data = sealer.seal_status(b'{"type":"heartbeat"}')
    out.append({"name": "compact status message", "device_id": "sensor-9", "key": KEY16.hex(), "key_id": 0,
                "link": "lora", "tag_len": 8, "epoch": 4, "seq": 0, "timestamp_ms": None,
                "payload": b'{"type":"heartbeat"}'.hex(), "status": True, "frame": data.hex()})
    return out


def _reseal(body: bytes) -> bytes:
    return body + wire.crc_trailer(body)


def outcome_vectors():
    """Frames the hub must classify, for a hub holding the devices listed."""
    devices = [{"device_id": "pump-1", "key": KEY32.hex(), "key_id": 0, "link": "wifi", "min_tag_len": 16}]
    sealer = Sealer("pump-1", KEY32, link="wifi", epoch=4)
    first = sealer.seal(b"a")
    second = sealer.seal(b"b")
    flipped = bytearray(second)
    flipped[5] ^= 0x10
    tampered = bytearray(second[:-4])
    tampered[-17] ^= 0x01  # the last payload byte, CRC made good again
    weak = Sealer("pump-1", KEY32, link="wifi", epoch=4, tag_len=8)
    weak.seq = 2
    other_key = Sealer("pump-1", KEY32, key_id=9, link="wifi", epoch=4)
    other_key.seq = 3
    bad_version = _reseal(bytes([0x20]) + second[1:-4])
    stranger = Sealer("pump-2", KEY32, link="wifi", epoch=4).seal(b"a")
    topic = topic_for("pump-1")
    cases = [
        ("first frame", topic, first, "valid"),
        ("second frame", topic, second, "valid"),
        ("the same frame again", topic, second, "duplicate"),
        ("one bit flipped", topic, bytes(flipped), "corrupt"),
        ("truncated by one byte", topic, second[:-1], "corrupt"),
        ("extended by one byte", topic, second + b"\x00", "corrupt"),
        ("shorter than a CRC", topic, b"\x11\x00", "corrupt"),
        ("payload changed, CRC recomputed", topic, _reseal(bytes(tampered)), "forged"),
        ("8-byte tag below the 16-byte minimum", topic, weak.seal(b"c"), "forged"),
        ("unknown key id", topic, other_key.seal(b"d"), "forged"),
        ("another device's frame on this topic", topic, stranger, "forged"),
        ("format version 2", topic, bad_version, "malformed"),
        ("no key for the topic's device", topic_for("pump-3"), first, "unknown_device"),
    ]
    return {"devices": devices,
            "frames": [{"name": n, "topic": t, "frame": f.hex(), "outcome": o} for n, t, f, o in cases]}


def key_vectors():
    master = bytes(range(32))
    return [{"master_secret": master.hex(), "device_id": device, "key_id": key_id,
             "key": derive_device_key(master, device, key_id).hex()}
            for device, key_id in (("pump-1", 0), ("pump-1", 1), ("monitor-2", 0))]


if __name__ == "__main__":
    for name, data in (("frames", frame_vectors()), ("outcomes", outcome_vectors()), ("keys", key_vectors()),
                       ("compact", compact_vectors())):
        (HERE / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {HERE / name}.json")
