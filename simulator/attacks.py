"""Attacks the simulator injects, built from frames it has seen on the wire.

Each returns (topic, bytes) for one attack; the ground truth decides the expected outcome.
"""

import random

from agent import Sealer, topic_for
from agent import frame as wire

KINDS = ("tamper", "forge", "replay_recent", "replay_old", "cross_device", "downgrade", "truncate", "unknown_device",
         "flood")
# The hub outcome each attack must get (replays: decided by the ledger, duplicate or replay).
EXPECTED = {"tamper": "forged", "forge": "forged", "cross_device": "forged", "downgrade": "forged",
            "truncate": "forged", "unknown_device": "unknown_device", "flood": "unknown_device"}


def _reseal_crc(body: bytes) -> bytes:
    return body + wire.crc_trailer(body)


def tamper(rng: random.Random, frame: bytes, topic: str):
    """Change a payload byte and make the CRC good again: only the MAC can tell."""
    _, _, _, _, _, start, tag_at, _ = wire.decode(frame)
    body = bytearray(frame[:-wire.CRC_LEN])
    position = rng.randrange(start, tag_at) if tag_at > start else 3
    body[position] ^= rng.randrange(1, 256)
    return topic, _reseal_crc(bytes(body))


def forge(rng: random.Random, frame: bytes, topic: str):
    """A well-formed frame with a random tag (an attacker without the key)."""
    _, _, _, _, _, _, tag_at, tag_len = wire.decode(frame)
    return topic, _reseal_crc(frame[:tag_at] + rng.randbytes(tag_len))


def cross_device(rng: random.Random, frame: bytes, topic: str, other_device: str):
    """A genuine frame moved to another device's topic."""
    return topic_for(other_device), frame


def downgrade(rng: random.Random, frame: bytes, topic: str, device: str, key: bytes, link: str):
    """A genuine MAC, cut to 8 bytes: refused under a 16-byte minimum whatever it says."""
    epoch, seq = wire.decode(frame)[2:4]
    weak = Sealer(device, key, link=link, epoch=epoch, tag_len=8)
    weak.seq = seq
    return topic, weak.seal(b"downgraded")


def truncate(rng: random.Random, frame: bytes, topic: str):
    """Part of the tag cut off and the CRC recomputed (a plain cut is just link damage)."""
    return topic, _reseal_crc(frame[: -wire.CRC_LEN - rng.randrange(1, 5)])


def unknown_device(rng: random.Random, frame: bytes, topic: str):
    return topic_for(f"intruder-{rng.randrange(10**6)}"), frame


def flood(rng: random.Random, count: int):
    """Random bytes on random device ids: no state may grow from them."""
    return [(topic_for(f"flood-{rng.getrandbits(40):x}"), rng.randbytes(rng.randrange(20, 80))) for _ in range(count)]
