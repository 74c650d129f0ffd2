"""Link fault models: what a link does to each frame, decided by a seeded random generator.

A model turns (send time, frame length) into a Fate: lost or not, which bits flipped, and
one delay per delivered copy. Fates are data: a trace stores them, and applying the same
fates to the same frames gives the same arrivals, bit for bit (simulator/trace.py).

Loss: Bernoulli, Gilbert-Elliott with netem's (p, r, 1-h, 1-k), netem's 4-state Markov
model (p13, p31, p32, p23, p14), and outages (frames dropped, or held and delivered when the
link comes back). Corruption: independent bit errors at a BER over every bit of the frame
(long frames suffer more) plus error bursts. Duplication; delay with jitter, which is what
reorders frames (not netem's gap rule); a sender-side rate limit that queues frames.
"""

import math
import random
from dataclasses import dataclass, field

from hardware.link_registry import Link


@dataclass(frozen=True)
class Fate:
    lost: bool
    flips: tuple = ()  # bit positions flipped in every delivered copy
    delays: tuple = ()  # seconds from sending to arrival, one per delivered copy

    def to_json(self) -> dict:
        return {"lost": self.lost, "flips": list(self.flips), "delays": list(self.delays)}

    @classmethod
    def from_json(cls, data: dict) -> "Fate":
        return cls(bool(data["lost"]), tuple(data["flips"]), tuple(data["delays"]))


def apply_fate(frame: bytes, fate: Fate) -> bytes:
    """The bytes that arrive (when any do)."""
    if not fate.flips:
        return frame
    damaged = bytearray(frame)
    for bit in fate.flips:
        damaged[bit >> 3] ^= 1 << (bit & 7)
    return bytes(damaged)


# -- loss ---------------------------------------------------------------------------------


class Bernoulli:
    def __init__(self, p: float):
        self.p = p

    def lost(self, rng: random.Random) -> bool:
        return rng.random() < self.p

    @property
    def stationary(self) -> float:
        return self.p


class GilbertElliott:
    """netem `gemodel p r 1-h 1-k`: p good->bad, r bad->good, loss 1-h in bad, 1-k in good."""

    def __init__(self, p: float, r: float, one_minus_h: float = 1.0, one_minus_k: float = 0.0):
        self.p, self.r, self.loss_bad, self.loss_good = p, r, one_minus_h, one_minus_k
        self.bad = False

    def lost(self, rng: random.Random) -> bool:
        # netem's order (sch_netem.c, loss_gilb_ell): the frame is lost or not in the state it
        # found; the transition then decides the state the next frame finds.
        found_bad = self.bad
        self.bad = (rng.random() >= self.r) if found_bad else (rng.random() < self.p)
        return rng.random() < (self.loss_bad if found_bad else self.loss_good)

    def advance(self, rng: random.Random, steps: int) -> None:
        """Run the chain `steps` transitions without a frame: time passing between the frames
        of a device that sends seldom, so a fade of seconds does not last for minutes. One draw:
        after n steps P(bad) = pi + (P(bad now) - pi) (1 - p - r)^n, pi = p / (p + r)."""
        if steps <= 0 or self.p + self.r == 0:
            return
        pi = self.p / (self.p + self.r)
        self.bad = rng.random() < pi + ((1.0 if self.bad else 0.0) - pi) * (1.0 - self.p - self.r) ** steps

    @property
    def stationary(self) -> float:
        bad = self.p / (self.p + self.r)
        return bad * self.loss_bad + (1 - bad) * self.loss_good


class Markov4:
    """netem `loss state p13 p31 p32 p23 p14` (sch_netem.c, loss_4state): states 1 and 2
    receive (in a gap, in a burst), 3 and 4 lose (in a burst, isolated)."""

    def __init__(self, p13: float, p31: float, p32: float = 0.0, p23: float = 0.0, p14: float = 0.0):
        self.p13, self.p31, self.p32, self.p23, self.p14 = p13, p31, p32, p23, p14
        self.state = 1

    def lost(self, rng: random.Random) -> bool:
        u, s = rng.random(), self.state
        if s == 1:
            self.state = 4 if u < self.p14 else 3 if u < self.p14 + self.p13 else 1
        elif s == 2:
            self.state = 3 if u < self.p23 else 2
        elif s == 3:
            self.state = 2 if u < self.p32 else 1 if u < self.p32 + self.p31 else 3
        else:
            self.state = 1
        return self.state >= 3

    @property
    def stationary(self) -> float:
        """Long-run loss: the stationary probability of states 3 and 4."""
        p = [[1 - self.p13 - self.p14, 0.0, self.p13, self.p14], [0.0, 1 - self.p23, self.p23, 0.0],
             [self.p31, self.p32, 1 - self.p31 - self.p32, 0.0], [1.0, 0.0, 0.0, 0.0]]
        pi = [0.25] * 4
        for _ in range(5000):  # power iteration; the chains we use mix in far fewer steps
            pi = [sum(pi[i] * p[i][j] for i in range(4)) for j in range(4)]
        return pi[2] + pi[3]


@dataclass(frozen=True)
class Outage:
    start: float  # seconds into the run
    duration: float
    queue: bool = False  # False: every frame sent meanwhile is lost; True: delivered when it ends


# -- the whole link ----------------------------------------------------------------------


@dataclass
class LinkModel:
    name: str
    loss: object  # Bernoulli | GilbertElliott | Markov4
    ber: float = 0.0
    burst_rate: float = 0.0  # probability that a frame is hit by an error burst
    burst_bits: int = 0  # how many consecutive bits a burst spans
    duplicate: float = 0.0
    delay_s: float = 0.0
    jitter_s: float = 0.0
    jitter_dist: str = "normal"  # normal (clipped at 0), uniform (+-jitter), or exponential (mean jitter)
    rate_limit: float = 0.0  # frames per second the sender may put on the link; 0: none
    outages: list = field(default_factory=list)
    _next_free: float = field(default=0.0, repr=False)

    @property
    def expected_loss(self) -> float:
        return self.loss.stationary

    def expected_corruption(self, frame_bytes: int) -> float:
        """P(a delivered frame of that size is damaged) under this model."""
        return 1 - (1 - self.ber) ** (8 * frame_bytes) * (1 - self.burst_rate)

    def fate(self, rng: random.Random, t: float, nbytes: int) -> Fate:
        if self.rate_limit:  # the sender queues behind the frames before it
            start = max(t, self._next_free)
            self._next_free = start + 1.0 / self.rate_limit
            wait = start - t
        else:
            wait = 0.0
        lost = self.loss.lost(rng)
        for outage in self.outages:
            if outage.start <= t + wait < outage.start + outage.duration:
                if not outage.queue:
                    lost = True
                else:
                    wait = outage.start + outage.duration - t
        if lost:
            return Fate(True)
        copies = 2 if self.duplicate and rng.random() < self.duplicate else 1
        delays = tuple(round(wait + self._delay(rng), 6) for _ in range(copies))  # as the trace stores them
        return Fate(False, self._flips(rng, nbytes * 8), delays)

    def _delay(self, rng: random.Random) -> float:
        if not self.jitter_s:
            return self.delay_s
        if self.jitter_dist == "uniform":
            return max(0.0, self.delay_s + rng.uniform(-self.jitter_s, self.jitter_s))
        if self.jitter_dist == "exponential":  # a long tail: queues that sometimes build up
            return self.delay_s + rng.expovariate(1.0 / self.jitter_s)
        return max(0.0, rng.gauss(self.delay_s, self.jitter_s))

    def _flips(self, rng: random.Random, nbits: int) -> tuple:
        flips = set()
        if self.ber:
            # Gaps between bit errors are geometric: skip straight to the next error.
            log_q = math.log1p(-self.ber)
            position = -1
            while True:
                position += 1 + int(math.log(1.0 - rng.random()) / log_q)
                if position >= nbits:
                    break
                flips.add(position)
        if self.burst_rate and rng.random() < self.burst_rate:
            first = rng.randrange(nbits)
            for bit in range(first, min(nbits, first + max(1, self.burst_bits))):
                if rng.random() < 0.5:  # a burst garbles bits, about half of them flip
                    flips.add(bit)
            if not flips:
                flips.add(first)
        return tuple(sorted(flips))


# Profile settings that are numbers, and the range each must lie in (ValueError otherwise).
_PROBABILITIES = ("loss_rate", "p", "r", "one_minus_h", "one_minus_k", "p13", "p31", "p32", "p23", "p14", "ber",
                  "burst_rate", "duplicate")
_RANGES = {**{key: (0.0, 1.0) for key in _PROBABILITIES}, "burst_bits": (1, 10**6), "delay_ms": (0.0, 1e7),
           "jitter_ms": (0.0, 1e7), "rate_limit": (0.0, 1e9)}


def check_ranges(link_name: str, overrides: dict) -> None:
    for key, (low, high) in _RANGES.items():
        value = overrides.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:  # nan too
            raise ValueError(f"{link_name}: {key} = {value!r} must be a number in {low:g}..{high:g}")


def model_for(link: Link, overrides: dict | None = None) -> LinkModel:
    """The model of a hardware/links profile; overrides (scenario file, command line) win.

    The registry's `corrupt` (damaged frames reaching the hub) becomes the burst rate: real
    links drop most bit-damaged frames at layer 2, so what remains is rare, whole-frame damage.
    Set `ber` to model a raw channel instead.
    """
    check_ranges(link.name, overrides or {})
    o = dict(overrides or {})
    loss_kind = o.pop("loss", "gilbert")
    if loss_kind == "bernoulli":
        loss = Bernoulli(o.pop("loss_rate", link.frame_loss))
    elif loss_kind == "markov4":
        loss = Markov4(*(o.pop(k) for k in ("p13", "p31", "p32", "p23", "p14")))
    elif loss_kind == "gilbert":
        burst = link.burst
        loss = GilbertElliott(o.pop("p", burst.p), o.pop("r", burst.r), o.pop("one_minus_h", burst.one_minus_h),
                              o.pop("one_minus_k", burst.one_minus_k))
    else:
        raise ValueError(f"{link.name}: unknown loss model {loss_kind!r} (bernoulli, gilbert, markov4)")
    outages = [Outage(**spec) for spec in o.pop("outages", [])]
    model = LinkModel(name=link.name, loss=loss, ber=o.pop("ber", 0.0), burst_rate=o.pop("burst_rate", link.corrupt),
                      burst_bits=o.pop("burst_bits", 16), duplicate=o.pop("duplicate", link.duplicate),
                      delay_s=o.pop("delay_ms", link.delay_ms) / 1000, jitter_s=o.pop("jitter_ms", link.jitter_ms) / 1000,
                      jitter_dist=o.pop("jitter_dist", "normal"), rate_limit=o.pop("rate_limit", 0.0), outages=outages)
    if model.jitter_dist not in ("normal", "uniform", "exponential"):
        raise ValueError(f"{link.name}: jitter_dist must be normal, uniform or exponential")
    if o:
        raise ValueError(f"{link.name}: unknown profile settings {', '.join(sorted(o))}")
    return model
