"""Fault traces: for every frame sent, what the link did to it; and every injected attack.

JSON Lines. The first line is a header; every other line is a frame or an attack:

    {"linkseal_trace": 1, "seed": 7, "profiles": {...}, "versions": {...}}
    {"kind": "frame", "t": 12.5, "link": "wifi", "topic": "linkseal/v1/d/rec", "frame": B64,
     "fate": {"lost": false, "flips": [17, 230], "delays": [0.004, 0.031]}}
    {"kind": "attack", "attack": "tamper", "t": 13.0, "topic": "...", "frame": B64}

Frames carry their bytes, so replaying a trace needs no keys and gives a bit-identical
capture. A trace can also be made from an observed loss pattern (one received/lost mark per
frame, as ns-3's ReceiveListErrorModel or Mahimahi's traces) and replayed against new frames.
"""

import base64
import json
from dataclasses import dataclass
from pathlib import Path

from .faults import Fate, apply_fate

TRACE_VERSION = 1


class TraceError(ValueError):
    """A trace file that cannot be replayed; names the file and line."""


@dataclass
class Sent:
    t: float
    link: str
    topic: str
    frame: bytes
    fate: Fate


@dataclass
class Attack:
    attack: str
    t: float
    topic: str
    frame: bytes


def write_trace(path: Path, header: dict, events: list) -> None:
    with open(path, "w") as out:
        out.write(json.dumps({"linkseal_trace": TRACE_VERSION, **header}) + "\n")
        for event in events:
            if isinstance(event, Sent):
                line = {"kind": "frame", "t": event.t, "link": event.link, "topic": event.topic,
                        "frame": base64.b64encode(event.frame).decode(), "fate": event.fate.to_json()}
            else:
                line = {"kind": "attack", "attack": event.attack, "t": event.t, "topic": event.topic,
                        "frame": base64.b64encode(event.frame).decode()}
            out.write(json.dumps(line) + "\n")


def read_trace(path: Path) -> tuple[dict, list]:
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise TraceError(f"{path}: {exc.strerror}") from None
    try:
        header = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError:
        header = {}
    if header.get("linkseal_trace") != TRACE_VERSION:
        raise TraceError(f"{path}:1: not a linkseal trace (version {TRACE_VERSION} header expected)")
    events = []
    for number, line in enumerate(lines[1:], start=2):
        try:
            item = json.loads(line)
            frame = base64.b64decode(item["frame"], validate=True)
            if item["kind"] == "frame":
                events.append(Sent(float(item["t"]), item["link"], item["topic"], frame, Fate.from_json(item["fate"])))
            elif item["kind"] == "attack":
                events.append(Attack(item["attack"], float(item["t"]), item["topic"], frame))
            else:
                raise ValueError(f"unknown kind {item['kind']!r}")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise TraceError(f"{path}:{number}: {type(exc).__name__}: {exc}") from None
    return header, events


def without_status(events: list) -> tuple[list, int]:
    """The events other than devices' status messages (a proxy's trace of real devices has
    both; the ground truth is about records), and how many were left out."""
    kept = [e for e in events if not e.topic.endswith("/status")]
    return kept, len(events) - len(kept)


def arrivals(events: list) -> list:
    """What reaches the broker, in arrival order: (t, topic, bytes, event index, damaged)."""
    out = []
    for index, event in enumerate(events):
        if isinstance(event, Attack):
            out.append((event.t, index, 0, event.topic, event.frame, False))
            continue
        if event.fate.lost:
            continue
        data = apply_fate(event.frame, event.fate)
        for copy, delay in enumerate(event.fate.delays):
            out.append((event.t + delay, index, copy, event.topic, data, bool(event.fate.flips)))
    out.sort(key=lambda a: (a[0], a[1], a[2]))  # ties keep the order frames were sent in
    return [(t, topic, data, index, damaged) for t, index, _, topic, data, damaged in out]


def fates_from_pattern(pattern: str, delay_s: float = 0.0) -> list:
    """Fates from an observed loss pattern: '1' (or '+') received, '0' (or '-') lost, one per
    frame; spaces and line breaks are ignored. TraceError names the line and column of
    anything else, and refuses a pattern without a frame."""
    fates = []
    for line_number, line in enumerate(pattern.splitlines(), start=1):
        for column, mark in enumerate(line, start=1):
            if mark in "1+":
                fates.append(Fate(False, (), (delay_s,)))
            elif mark in "0-":
                fates.append(Fate(True))
            elif not mark.isspace():
                raise TraceError(f"line {line_number}, column {column}: {mark!r} is neither received (1) nor "
                                 "lost (0)")
    if not fates:
        raise TraceError("no frames: a loss pattern is 1 (received) and 0 (lost), one per frame")
    return fates
