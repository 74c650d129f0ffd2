"""`sim run --anomalies`: days of realistic device traffic, with injected anomalies and the
ground truth to hold the hub's watch (hub/core/watch.py) against.

Each device has its own pace: a record interval, a heartbeat period, a payload size, a daily
cycle (rate +-30%), jitter, an occasional reconnect, and its link type's faults (losses in
bursts, damage, delay, duplicates: simulator/faults.py). Injected on chosen devices, after
the hub has had time to learn them:

- silence: the device's link blacked out for a while; it keeps sealing, and delivers its
  backlog (after a new birth) when the link is back;
- flood: validly sealed records at 10x its rate;
- exfiltration: payloads 8x their usual size;
- reconnect_storm: a new connection (birth) every 15 s;
- drift: rate and payload size growing slowly, by 60% over a day and a half (must NOT alarm);
- clean_stop: a death, then nothing (the device must be offline, never silent).

Everything is a pure function of the seed, so two runs give the same trace, and the hub's
watch, fed on trace time, the same events at the same times.
"""

import heapq
import math
import random
from dataclasses import dataclass

from agent import Sealer, topic_for
from agent.sealer import status_topic_for
from agent.status import BIRTH, DEATH, HEARTBEAT, status_payload
from hardware.link_registry import load_links

from .faults import apply_fate, model_for

KINDS = ("silence", "flood", "exfiltration", "reconnect_storm", "drift", "clean_stop")
# What each anomaly should raise at the hub: an event kind, and for behaviour alarms the metrics
# whose rules may fire; None: nothing may fire (drift), or the device must end offline (clean_stop).
EXPECTED = {"silence": ("silent", None), "flood": ("behaviour_alarm", ("records",)),
            "exfiltration": ("behaviour_alarm", ("bytes_mean", "bytes_max")),
            "reconnect_storm": ("behaviour_alarm", ("births",)), "drift": (None, None), "clean_stop": (None, None)}
DAY = 86400.0
WARM_UP = 3 * 3600.0  # anomalies start after the hub has learned the devices
ANOMALY_S = {"silence": 1800.0, "flood": 1800.0, "exfiltration": 1800.0, "reconnect_storm": 900.0,
             "drift": 1.5 * DAY, "clean_stop": 0.0}
# Paces by link type: (record intervals, heartbeat period) in seconds. LoRa is duty-cycled.
_PACES = {"lora": ((300.0, 600.0), 300.0), "ble": ((30.0, 60.0, 120.0), 120.0),
          "wifi": ((30.0, 60.0, 120.0, 300.0), 120.0), "cellular": ((60.0, 120.0, 300.0), 300.0)}
_DEFAULT_PACE = ((60.0, 120.0, 300.0, 600.0), 300.0)  # wired: fibre, twisted pair, coax, RS-485 (plant sensors)
# The link registry's loss bursts are counted in frames sent back to back; a device that sends
# once a minute does not stay in a fade for minutes. Its loss chain steps once per FADE_S of
# the time between its frames (at most FADE_STEPS_MAX), so bursts keep their length in time.
FADE_S = 10.0
FADE_STEPS_MAX = 1000


@dataclass
class Pace:
    device: str
    link: str
    interval: float  # seconds between records, on average over a day
    heartbeat: float
    size: int  # usual payload bytes
    phase: float  # of its daily cycle, in days


@dataclass
class Injection:
    kind: str
    device: str
    start: float
    end: float

    def to_json(self) -> dict:
        return {"kind": self.kind, "device": self.device, "start": self.start, "end": self.end}


def plan(seed: int, devices: int, links, duration: float, kinds) -> tuple[list, list]:
    """(paces, injections) of a run: each kind of anomaly on its own device, at a seeded time
    after WARM_UP, ending before the run does."""
    rng = random.Random(seed)
    paces = []
    for n in range(devices):
        link = links[n % len(links)]
        intervals, heartbeat = _PACES.get(link, _DEFAULT_PACE)
        paces.append(Pace(f"{link}-{n // len(links) + 1}", link, rng.choice(intervals), heartbeat,
                          rng.randrange(12, 21), rng.random()))
    injections = []
    chosen = rng.sample(range(devices), min(devices, len(kinds)))
    for kind, index in zip(kinds, chosen):
        length = ANOMALY_S[kind]
        latest = duration - length - 2 * 3600.0
        if latest < WARM_UP:
            raise ValueError(f"a run of {duration:g} s is too short for {kind}: it needs "
                             f"{WARM_UP + length + 2 * 3600.0:g} s")
        start = round(rng.uniform(WARM_UP, latest), 3)
        injections.append(Injection(kind, paces[index].device, start, round(start + length, 3)))
    return paces, injections


def _device_sends(pace: Pace, injections: list, duration: float, rng: random.Random):
    """(t, what, size) a device sends, in time order: what is "record", "birth", "heartbeat",
    "death"; during a silence what the link swallows is tagged "blackout" and its records
    come again, queued, after the link is back ("backlog")."""
    by_kind = {i.kind: i for i in injections}
    silence, flood = by_kind.get("silence"), by_kind.get("flood")
    exfil, storm, drift = by_kind.get("exfiltration"), by_kind.get("reconnect_storm"), by_kind.get("drift")
    stop = by_kind.get("clean_stop")
    end = stop.start if stop else duration

    def growth(t):  # drift: up to 60%, reached over its length
        if drift is None or t < drift.start:
            return 1.0
        return 1.0 + 0.6 * min(1.0, (t - drift.start) / (drift.end - drift.start))

    sends = []
    t = rng.uniform(0, 60.0)
    sends.append((t, BIRTH, 0))
    # Records: the daily cycle and jitter in their spacing, sizes around the device's own.
    t_record = t + rng.uniform(0, pace.interval)
    while t_record < end:
        size = max(4, int(pace.size * rng.uniform(0.85, 1.15) * growth(t_record)))
        if exfil and exfil.start <= t_record < exfil.end:
            size = pace.size * 8
        sends.append((t_record, "record", size))
        cycle = 1.0 + 0.3 * math.sin(2 * math.pi * (t_record / DAY + pace.phase))
        spacing = pace.interval / cycle / growth(t_record) * rng.uniform(0.8, 1.2)
        if flood and flood.start <= t_record < flood.end:
            spacing /= 10.0
        t_record += spacing
    t_beat = t + pace.heartbeat
    while t_beat < end:
        sends.append((t_beat, HEARTBEAT, 0))
        t_beat += pace.heartbeat * rng.uniform(0.98, 1.02)
    # An occasional reconnect (an access point restarting, a roam): about one every three days.
    for day in range(int(duration // DAY) + 1):
        if rng.random() < 0.3:
            at = day * DAY + rng.uniform(0, DAY)
            if at < end:
                sends.append((at, BIRTH, 0))
    if storm:
        sends += [(storm.start + k * 15.0, BIRTH, 0) for k in range(int((storm.end - storm.start) // 15.0))]
    if stop:
        sends.append((stop.start, DEATH, 0))
    sends.sort()
    if silence:  # the link swallows everything; the agent keeps its records and sends them on return
        kept = [s for s in sends if not silence.start <= s[0] < silence.end]
        backlog = [(silence.end + 1.0 + 0.01 * k, "backlog", size) for k, (_, what, size) in
                   enumerate(s for s in sends if silence.start <= s[0] < silence.end and s[1] == "record")]
        sends = sorted(kept + [(silence.end + 0.5, BIRTH, 0)] + backlog)
    return sends


def traffic(paces: list, injections: list, keys: dict, duration: float, seed: int, profiles=None):
    """The messages as they arrive at the hub, in arrival order: (t, topic, frame, intact,
    device). Sealed here, in each device's sending order; the link's fate applied."""
    registry = load_links()
    rng = random.Random(seed + 1)
    streams = []
    for pace in paces:
        mine = [i for i in injections if i.device == pace.device]
        sends = _device_sends(pace, mine, duration, random.Random(rng.random()))
        streams.append([(t, pace.device, what, size) for t, what, size in sends])
    sealers = {p.device: Sealer(p.device, keys[p.device], link=p.link, epoch=1) for p in paces}
    models = {p.device: model_for(registry[p.link], (profiles or {}).get(p.link)) for p in paces}
    fates = {p.device: random.Random(rng.random()) for p in paces}
    paced = {p.device: p for p in paces}
    pending = []  # (arrival t, order, topic, frame, intact, device): arrivals not yet due
    order = 0
    last_sent = {}
    for t, device, what, size in heapq.merge(*streams):
        while pending and pending[0][0] <= t:
            yield _pop(pending)
        sealer = sealers[device]
        if what in ("record", "backlog"):
            frame, topic = sealer.seal(fates[device].randbytes(size)), topic_for(device)
        else:
            doc = status_payload(what, sealer, 0, 0, every=(paced[device].heartbeat, paced[device].interval))
            frame, topic = sealer.seal_status(doc), status_topic_for(device)
        model = models[device]
        gap = t - last_sent.get(device, t)
        last_sent[device] = t
        if hasattr(model.loss, "advance") and gap > FADE_S:
            model.loss.advance(fates[device], min(FADE_STEPS_MAX, int(gap / FADE_S)))
        fate = model.fate(fates[device], t, len(frame))
        if fate.lost:
            continue
        delivered = apply_fate(frame, fate)
        for delay in fate.delays:
            order += 1
            heapq.heappush(pending, (t + delay, order, topic, delivered, not fate.flips, device))
    while pending:
        yield _pop(pending)


def _pop(pending):
    t, _, topic, frame, intact, device = heapq.heappop(pending)
    return t, topic, frame, intact, device
