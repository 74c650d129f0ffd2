"""The demo scenario: devices on every link type, link faults, a reboot, and a few attacks.

Everything is generated from one seed; each message carries the outcome the ground truth
says the hub must give it.
"""

import random
import struct
from dataclasses import dataclass, field

from agent import Sealer, topic_for
from agent import frame as wire
from hub.keys import derive_device_key
from hub.link_registry import load_links
from hub.verifier import DeviceKeys
from hub.window import WINDOW

from .channel import Channel
from .truth import Ledger

DEVICES_PER_LINK = 2
SECONDS_PER_FRAME = 0.5


@dataclass
class Traffic:
    devices: list  # DeviceKeys for the verifier
    messages: list = field(default_factory=list)  # (t, topic, bytes, expected outcome)
    ledger: Ledger = field(default_factory=Ledger)


def _reseal_crc(data: bytes) -> bytes:
    """What an attacker who knows CRC-32 but not the key does after changing bytes."""
    body = data[: -wire.CRC_LEN]
    return body + struct.pack(">I", wire.crc32(body))


def build(seed: int = 1, frames: int = 2000, stress: float = 1.0, start: float = 1.8e9, keyfile=None) -> Traffic:
    """The scenario's traffic; with a hub KeyFile its devices are provisioned into it."""
    rng = random.Random(seed)
    master = rng.randbytes(32)
    links = load_links()
    sealers, channels, keys = [], {}, {}
    for name in sorted(links):
        for n in range(DEVICES_PER_LINK):
            device = f"{name}-{n + 1}"
            if keyfile is not None:
                keys[device] = bytes.fromhex(keyfile.provision(device, name)["key"])
            else:
                keys[device] = derive_device_key(master, device, 0)
            sealers.append(Sealer(device, keys[device], link=name, epoch=1))
            channels[device] = Channel(links[name], random.Random(rng.random()), stress)
    traffic = Traffic([DeviceKeys(s.device_id, {0: keys[s.device_id]}, s.link) for s in sealers])
    ledger = traffic.ledger
    clock = [start]
    sent = {s.device_id: [] for s in sealers}  # every frame each device sealed, for replays

    def deliver(sealer, arrivals):
        for data, damaged in arrivals:
            clock[0] += SECONDS_PER_FRAME / len(sealers)
            if damaged:
                outcome = ledger.unauthentic(sealer.device_id, sealer.link, "corrupt")
            else:
                epoch, seq = wire.decode(data)[2:4]
                outcome = ledger.authentic(sealer.device_id, sealer.link, epoch, seq)
            traffic.messages.append((round(clock[0], 3), topic_for(sealer.device_id), data, outcome))

    # One device loses the broker for 50 frames, buffers them, reboots into a new epoch,
    # and flushes the buffered old-epoch frames a little later: each must count once.
    rebooting = len(sealers) // 2
    outage = range(frames // 2 - 50, frames // 2)
    buffered = []
    for i in range(frames):
        for index, sealer in enumerate(sealers):
            if index == rebooting and i == frames // 2:
                sealer = sealers[index] = Sealer(sealer.device_id, keys[sealer.device_id], link=sealer.link,
                                                 epoch=sealer.epoch + 1)
            data = sealer.seal(rng.randbytes(24) if i % 2 else b'{"spo2": 97, "hr": 71}')
            sent[sealer.device_id].append(data)
            if index == rebooting and i in outage:
                buffered.append(data)
                continue
            deliver(sealer, channels[sealer.device_id].send(data))
            if index == rebooting and i == frames // 2 + 10:
                deliver(sealer, [(old, False) for old in buffered])
    for sealer in sealers:
        deliver(sealer, channels[sealer.device_id].flush())
    _attacks(traffic, sealers, sent, keys, rng, clock[0])
    return traffic


def _attacks(traffic, sealers, sent, keys, rng, t):
    ledger, messages = traffic.ledger, traffic.messages
    victim, other = sealers[0], sealers[-1]

    def inject(topic, data, outcome):
        messages.append((round(t, 3), topic, data, outcome))

    # Tampering: a payload byte changed and the CRC made good again: the MAC catches it.
    tampered = bytearray(sent[victim.device_id][-1])
    tampered[6] ^= 0x01
    inject(topic_for(victim.device_id), _reseal_crc(bytes(tampered)),
           ledger.unauthentic(victim.device_id, victim.link, "forged"))
    # A frame moved to another device's topic: the device id is under the MAC.
    inject(topic_for(other.device_id), sent[victim.device_id][-2],
           ledger.unauthentic(other.device_id, other.link, "forged"))
    # Downgrade: a genuine MAC, truncated to 8 bytes, under a 16-byte minimum.
    weak = Sealer(victim.device_id, keys[victim.device_id], link=victim.link, epoch=victim.epoch, tag_len=8)
    weak.seq = victim.seq
    inject(topic_for(victim.device_id), weak.seal(b"downgrade"),
           ledger.unauthentic(victim.device_id, victim.link, "forged"))
    # Replay of a recorded frame from far behind the window (when the run is that long).
    history = sent[other.device_id]
    if len(history) > WINDOW + 200:
        old = history[len(history) - WINDOW - 100 - rng.randrange(100)]
        epoch, seq = wire.decode(old)[2:4]
        inject(topic_for(other.device_id), old, ledger.authentic(other.device_id, other.link, epoch, seq))
    # A device nobody provisioned.
    inject(topic_for("intruder-1"), sent[victim.device_id][0], ledger.unknown())
