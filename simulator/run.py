"""A simulation run: devices on links, fault models, attacks, ground truth, the hub's verdict.

generate() makes the trace events (what was sent, what each link did to it, which attacks);
label() walks the arrivals with the ground-truth ledger; verify_in_process() feeds them to
the hub core; compare() holds the hub's report against the truth, link by link.
"""

import random
import tomllib
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from agent import Sealer, topic_for
from agent import frame as wire
from agent.sealer import TOPIC_PREFIX
from hardware.link_registry import links_by_code, load_links
from hub.core.report import build_report
from hub.core.verifier import DeviceKeys, Verifier
from hub.core.window import WINDOW
from hub.keys.keyfile import derive_device_key

from . import attacks
from .faults import model_for
from .trace import Attack, Sent, arrivals
from .truth import Ledger

DEFAULT_ATTACKS = {"tamper": 3, "forge": 3, "replay_recent": 3, "replay_old": 3, "cross_device": 3, "downgrade": 3,
                   "truncate": 3, "unknown_device": 3, "flood": 50}


class ScenarioError(ValueError):
    """A scenario that cannot run; names the setting."""


@dataclass
class Scenario:
    devices: int = 12
    links: tuple = ("fiber", "twisted-pair", "coax", "wifi", "ble", "lora")
    duration: float = 60.0  # simulated seconds
    rate: float = 5.0  # frames per second per device
    seed: int = 7
    attacks: dict = field(default_factory=lambda: dict(DEFAULT_ATTACKS))
    profiles: dict = field(default_factory=dict)  # link -> model overrides

    def check(self):
        known = load_links()
        for link in self.links:
            if link not in known:
                raise ScenarioError(f"unknown link {link!r}; known: {', '.join(sorted(known))}")
        for kind in self.attacks:
            if kind not in attacks.KINDS:
                raise ScenarioError(f"unknown attack {kind!r}; known: {', '.join(attacks.KINDS)}")
        if self.devices < 1 or self.duration <= 0 or self.rate <= 0:
            raise ScenarioError("devices, duration and rate must be positive")
        for link, overrides in self.profiles.items():
            if link not in known:
                raise ScenarioError(f"profile for unknown link {link!r}")
            try:
                model_for(known[link], overrides)
            except (TypeError, ValueError) as exc:  # a bad setting: say which
                raise ScenarioError(str(exc)) from None


def load_scenario(path: Path, **overrides) -> Scenario:
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such scenario file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML ({exc})") from None
    allowed = {"devices", "links", "duration", "rate", "seed", "attacks", "profiles"}
    unknown = set(data) - allowed
    if unknown:
        raise ScenarioError(f"{path}: unknown settings {', '.join(sorted(unknown))}")
    if "links" in data:
        data["links"] = tuple(data["links"])
    scenario = Scenario(**{**data, **{k: v for k, v in overrides.items() if v is not None}})
    scenario.check()
    return scenario


@dataclass
class Generated:
    scenario: Scenario
    devices: list  # DeviceKeys for the hub
    device_links: dict  # device id -> link
    keys: dict  # device id -> key (the simulator plays every device)
    events: list  # Sent and Attack, in sending order
    models: dict  # device id -> LinkModel

    def header(self) -> dict:
        s = self.scenario
        return {"seed": s.seed, "devices": s.devices, "links": list(s.links), "duration": s.duration, "rate": s.rate,
                "attacks": s.attacks, "profiles": s.profiles, "versions": {"linkseal": version("linkseal"), "wire": 1}}


def make_devices(seed: int, devices: int, links) -> tuple[dict, dict]:
    """Device ids, keys and links for a scenario: a pure function of the seed, so a trace's
    header is enough to rebuild them when it is replayed."""
    master = random.Random(seed).randbytes(32)
    keys, device_links = {}, {}
    for n in range(devices):
        link = links[n % len(links)]
        device = f"{link}-{n // len(links) + 1}"
        keys[device] = derive_device_key(master, device, 0)
        device_links[device] = link
    return keys, device_links


def device_specs(keys: dict, device_links: dict) -> list:
    return [DeviceKeys(d, {0: keys[d]}, device_links[d]) for d in keys]


def generate(scenario: Scenario, fates=None, keyfile=None) -> Generated:
    """The run's events. fates: fates to use instead of the models' (a recorded loss pattern);
    keyfile: provision the devices in this hub key file and seal with its keys."""
    scenario.check()
    keys, device_links = make_devices(scenario.seed, scenario.devices, scenario.links)
    if keyfile is not None:
        for device, link in device_links.items():
            # The full form everywhere: this path models what a link does to frames that reach
            # the hub, damage included (LoRa here as a raw radio link; `--lorawan` models LoRaWAN).
            keys[device] = bytes.fromhex(keyfile.provision(device, link, save=False, form="full")["key"])
        keyfile.save()
    rng = random.Random(scenario.seed + 1)
    registry = load_links()
    sealers = {d: Sealer(d, keys[d], link=device_links[d], epoch=1) for d in keys}
    models = {d: model_for(registry[device_links[d]], scenario.profiles.get(device_links[d])) for d in keys}
    rngs = {d: random.Random(rng.random()) for d in keys}
    schedule = []
    for device in sealers:
        offset = rng.random() / scenario.rate
        count = int(scenario.duration * scenario.rate) if fates is None else len(fates)
        schedule += [(offset + i / scenario.rate, device) for i in range(count)]
    schedule.sort()
    given = iter(fates) if fates is not None else None
    events = []
    for t, device in schedule:
        reading = b'{"hr":%d,"spo2":%d}' % (rng.randrange(50, 120), rng.randrange(90, 100))
        frame = sealers[device].seal(reading)
        fate = next(given) if given is not None else models[device].fate(rngs[device], t, len(frame))
        events.append(Sent(round(t, 6), device_links[device], topic_for(device), frame, fate))
    events += _attacks(scenario, rng, events, keys, device_links)
    events.sort(key=lambda e: e.t)
    return Generated(scenario, device_specs(keys, device_links), device_links, keys, events, models)


def _attacks(scenario, rng, sent, keys, device_links) -> list:
    out = []
    devices = sorted(keys)
    by_device = {}
    for event in sent:
        # The attacker works from frames it saw arrive intact (recorded at the broker): a
        # "replay" of a frame the hub never received would be a first delivery, rightly accepted.
        if not event.fate.lost and not event.fate.flips:
            by_device.setdefault(event.topic, []).append(event)
    for kind, count in scenario.attacks.items():
        if kind == "flood":
            t = scenario.duration * rng.random()
            out += [Attack(kind, t, topic, data) for topic, data in attacks.flood(rng, count)]
            continue
        if kind == "cross_device" and len(devices) < 2:
            continue  # no other device to pass a frame off as; the report shows 0 injected
        for _ in range(count):
            device = rng.choice(devices)
            history = by_device.get(topic_for(device), [])
            if not history:
                continue
            if kind == "replay_old":
                if len(history) <= WINDOW + 10:
                    continue  # too short a run to reach outside the window; the report shows 0 injected
                victim = history[rng.randrange(0, len(history) - WINDOW - 10)]
                attack_t = history[-1].t + max(history[-1].fate.delays) + 1.0  # after the device moved on
            else:
                victim = history[rng.randrange(len(history))]
                attack_t = victim.t + max(victim.fate.delays) + 1.0  # seen arriving, then used
            frame, topic = victim.frame, victim.topic
            if kind == "tamper":
                topic, data = attacks.tamper(rng, frame, topic)
            elif kind == "forge":
                topic, data = attacks.forge(rng, frame, topic)
            elif kind in ("replay_recent", "replay_old"):
                data = frame
            elif kind == "cross_device":
                topic, data = attacks.cross_device(rng, frame, topic, rng.choice([d for d in devices if d != device]))
            elif kind == "downgrade":
                topic, data = attacks.downgrade(rng, frame, topic, device, keys[device], device_links[device])
            elif kind == "truncate":
                topic, data = attacks.truncate(rng, frame, topic)
            else:
                topic, data = attacks.unknown_device(rng, frame, topic)
            out.append(Attack(kind, round(attack_t, 6), topic, data))
    return out


def device_of(topic: str) -> str:
    """The device id in a record topic the simulator made (topic_for's inverse)."""
    return topic[len(TOPIC_PREFIX):-len("/rec")]


def label(events: list, device_links: dict) -> tuple[list, Ledger]:
    """The arrivals with the outcome the ground truth requires of each, and the ledger."""
    ledger = Ledger()
    labelled = []
    for t, topic, data, index, damaged in arrivals(events):
        event = events[index]
        device = device_of(topic)
        if device not in device_links:
            expected = ledger.unknown()
        elif isinstance(event, Attack) and event.attack not in ("replay_recent", "replay_old"):
            expected = ledger.unauthentic(device, device_links[device], attacks.EXPECTED[event.attack])
        elif damaged:
            expected = ledger.unauthentic(device, device_links[device], "corrupt")
        else:
            epoch, seq = wire.decode(data)[2:4]
            expected = ledger.authentic(device, device_links[device], epoch, seq)
        labelled.append((t, topic, data, index, expected))
    return labelled, ledger


def verify_in_process(devices: list, labelled: list) -> tuple[dict, list]:
    """The hub core's report, and its outcome for every arrival (`--no-broker`)."""
    verifier = Verifier(devices, {code: link.name for code, link in links_by_code().items()})
    outcomes = [verifier.verify(topic, data, t).outcome for t, topic, data, _, _ in labelled]
    return build_report(verifier), outcomes


def write_outputs(out_dir: Path, header: dict, events: list, labelled: list, hub: dict, comparison: dict) -> dict:
    """report.json, capture.jsonl (hub verify's format), trace.jsonl and a PNG per link."""
    import json

    from shared.capture import encode_line

    from .compare import plot
    from .trace import write_trace

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"trace": out_dir / "trace.jsonl", "capture": out_dir / "capture.jsonl", "report": out_dir / "report.json"}
    write_trace(paths["trace"], header, events)
    with open(paths["capture"], "w") as out:
        for t, topic, data, _, _ in labelled:
            out.write(encode_line(round(t, 6), topic, data) + "\n")
    paths["report"].write_text(json.dumps({"scenario": header, "comparison": comparison, "hub": hub}, indent=2,
                                          sort_keys=True) + "\n")
    paths["plots"] = plot(comparison, out_dir)
    return paths
