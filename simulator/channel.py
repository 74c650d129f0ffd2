"""A link's fault model from its registry figures: seeded, pure, one frame at a time.

Loss follows the Gilbert-Elliott model in netem's convention (p, r, 1-h, 1-k); a frame that
survives may be damaged (one bit flipped), duplicated or held back behind later frames.
The full fault-model set (outages, 4-state Markov, attacks by profile) is the simulator issue's.
"""

import random

from hub.link_registry import Link


class Channel:
    def __init__(self, link: Link, rng: random.Random, stress: float = 1.0):
        """stress multiplies the link's figures, to see rare faults in a short run."""
        self.link = link
        self.rng = rng
        self.stress = stress
        self.bad = False  # Gilbert-Elliott state
        self.held = []  # (frames still to pass, frame) held back for reordering

    def _chance(self, rate: float) -> bool:
        return self.rng.random() < min(1.0, rate * self.stress)

    def send(self, frame: bytes) -> list[tuple[bytes, bool]]:
        """What arrives when frame is sent: a list of (bytes, damaged) in arrival order."""
        burst = self.link.burst
        self.bad = (self.rng.random() >= burst.r) if self.bad else (self.rng.random() < burst.p * self.stress)
        loss = burst.one_minus_h if self.bad else burst.one_minus_k
        out = []
        if self.rng.random() >= loss:
            copies = 2 if self._chance(self.link.duplicate) else 1
            for _ in range(copies):
                if self._chance(self.link.corrupt):
                    out.append((self._flip_bit(frame), True))
                else:
                    out.append((frame, False))
        arriving = []
        still_held = []
        for remaining, item in self.held:
            (arriving if remaining <= 1 else still_held).append((remaining - 1, item))
        self.held = still_held
        for item in out:
            if self._chance(self.link.reorder):
                self.held.append((self.rng.randint(1, 5), item))
            else:
                arriving.append((0, item))
        return [item for _, item in arriving]

    def flush(self) -> list[tuple[bytes, bool]]:
        held, self.held = self.held, []
        return [item for _, item in held]

    def _flip_bit(self, frame: bytes) -> bytes:
        damaged = bytearray(frame)
        bit = self.rng.randrange(len(frame) * 8)
        damaged[bit // 8] ^= 1 << (bit % 8)
        return bytes(damaged)
