"""The hub's watch against the ground truth of an anomaly run (simulator/anomalies.py).

run() feeds the traffic to the hub core (the verifier and the watch the hub runs, on trace
time) and returns the events; judge() matches each injected anomaly with what the hub
raised, when, and when it cleared, and lists every alarm that matches no injection.
"""

from collections import deque

from hardware.link_registry import links_by_code
from hub.core.behaviour import DEFAULT_RULES
from hub.core.report import build_report
from hub.core.verifier import Verifier
from hub.core.watch import SILENT_AFTER, WINDOW_S, Watch

from .anomalies import DAY, EXPECTED, plan, traffic
from .run import device_specs, make_devices

WATCHED = ("silent", "back", "behaviour_alarm", "behaviour_clear")
TIME_SLACK = 0.1  # seconds
CLEAR_WINDOWS = 2  # an alarm up to this many windows after an anomaly ends still belongs to it


def run(seed: int, devices: int, links, duration: float, kinds, rules=DEFAULT_RULES, window_s: float = WINDOW_S,
        keyfile=None, capture=None) -> dict:
    """The hub core over an anomaly run. keyfile: provision the devices there (for `hub
    verify` of the capture); capture(t, topic, frame): called for every arrival."""
    paces, injections = plan(seed, devices, links, duration, kinds)
    keys, device_links = make_devices(seed, devices, links)
    if keyfile is not None:
        for device, link in device_links.items():
            keys[device] = bytes.fromhex(keyfile.provision(device, link, save=False, form="full")["key"])
        keyfile.save()
    verifier = Verifier(device_specs(keys, device_links), {code: link.name for code, link in links_by_code().items()})
    watch = Watch(verifier.record_event, verifier.status, rules=rules, window_s=window_s)
    events, recent, messages = [], {}, 0
    heartbeat = {p.device: p.heartbeat for p in paces}
    contradicted = []  # silent events the truth contradicts: something intact arrived within the 3 periods
    for t, topic, frame, intact, device in traffic(paces, injections, keys, duration, seed):
        watch.tick(t)
        verdict = verifier.verify_message(topic, frame, t)
        watch.observe(verdict, t)
        messages += 1
        if capture is not None:
            capture(t, topic, frame)
        if intact:
            recent.setdefault(device, deque(maxlen=64)).append(t)
        if verifier.events:
            for event in verifier.drain_events():
                if event["kind"] not in WATCHED:
                    continue
                events.append(event)
                if event["kind"] == "silent":
                    since = event["t"] - SILENT_AFTER * heartbeat[event["device"]]
                    # (the watch keeps times in float32 from its origin: a few hundredths of a second off)
                    if any(since + TIME_SLACK < heard <= event["t"] for heard in recent.get(event["device"], ())):
                        contradicted.append(event)
    return {"paces": paces, "injections": injections, "events": events, "contradicted": contradicted,
            "messages": messages, "liveness": {p.device: watch.liveness(p.device) for p in paces},
            "report": build_report(verifier, events=[]), "duration": duration, "window_s": window_s, "rules": rules}


def judge(result: dict) -> dict:
    """The injected-vs-measured section of the report."""
    window = result["window_s"]
    metric_of = {rule.name: rule.metric for rule in result["rules"]}
    heartbeat = {p.device: p.heartbeat for p in result["paces"]}
    events = result["events"]
    explained = set()  # indexes of events an injection accounts for
    rows = []
    for injection in result["injections"]:
        device, start, end = injection.device, injection.start, injection.end
        mine = [(i, e) for i, e in enumerate(events) if e["device"] == device]
        row = {**injection.to_json(), "detected": None, "detected_at": None, "delay_s": None, "cleared_at": None}
        kind, metrics = EXPECTED[injection.kind]
        if injection.kind == "silence":
            hb = heartbeat[device]
            silent = next(((i, e) for i, e in mine if e["kind"] == "silent" and start <= e["t"] <= end), None)
            back = next(((i, e) for i, e in mine if e["kind"] == "back" and e["t"] >= end), None)
            row["detected"] = silent is not None
            if silent:
                explained.add(silent[0])
                row.update(detected_at=silent[1]["t"], delay_s=silent[1]["t"] - start,
                           delay_heartbeats=(silent[1]["t"] - start) / hb)
            if back:
                explained.add(back[0])
                row.update(cleared_at=back[1]["t"], clear_heartbeats=(back[1]["t"] - end) / hb)
            row["ok"] = bool(silent and back and row["delay_heartbeats"] <= SILENT_AFTER
                             and row["clear_heartbeats"] <= 1)
        elif injection.kind == "clean_stop":
            liveness = result["liveness"][device]
            silenced = [e for _, e in mine if e["kind"] == "silent" and e["t"] >= start]
            row["liveness"] = liveness[0]
            row["detected"] = liveness[0] == "offline" and not silenced
            row["ok"] = row["detected"]
        else:
            during = [(i, e) for i, e in mine if e["kind"] == "behaviour_alarm"
                      and start <= e["t"] <= end + CLEAR_WINDOWS * window]
            fitting = [(i, e) for i, e in during if metrics and metric_of[_rule(e)] in metrics]
            if injection.kind == "drift":
                row["detected"] = bool(during)
                row["ok"] = not during  # it should be learned, not alarmed
            else:
                row["detected"] = bool(fitting)
                if fitting:
                    first = fitting[0][1]
                    row.update(detected_at=first["t"], delay_s=first["t"] - start, rule=_rule(first))
                    clear = next((e for _, e in mine if e["kind"] == "behaviour_clear" and e["t"] > first["t"]
                                  and _rule(e) == _rule(first)), None)
                    row["cleared_at"] = clear["t"] if clear else None
                for i, e in fitting:  # and their clears
                    explained.add(i)
                    explained.update(j for j, c in mine if c["kind"] == "behaviour_clear" and _rule(c) == _rule(e)
                                     and c["t"] > e["t"])
                row["ok"] = row["detected"]
        rows.append(row)
    contradicted = {id(e) for e in result["contradicted"]}
    unmatched = [e for i, e in enumerate(events) if i not in explained and e["kind"] in ("behaviour_alarm", "silent")]
    false = [e for e in unmatched if e["kind"] == "behaviour_alarm" or id(e) in contradicted]
    link_silences = [e for e in unmatched if e["kind"] == "silent" and id(e) not in contradicted]
    device_days = len(result["paces"]) * result["duration"] / DAY
    delays = [row["delay_heartbeats"] for row in rows if row.get("delay_heartbeats") is not None]
    return {
        "injected": rows,
        "all_detected": all(row["ok"] for row in rows),
        "unmatched": unmatched,
        "false_alarms": len(false),
        "link_silences": len(link_silences),
        "device_days": device_days,
        "false_alarms_per_1000_device_days": 1000.0 * len(false) / device_days,
        "link_silences_per_1000_device_days": 1000.0 * len(link_silences) / device_days,
        "silence_detection_delay_heartbeats": max(delays) if delays else None,
        "messages": result["messages"],
    }


def _rule(event) -> str:
    return event["reason"].split(":", 1)[0]


def print_judgement(judgement: dict, console) -> None:
    from rich.table import Table

    table = Table(title="Injected anomalies vs the hub's watch")
    for column in ("anomaly", "device", "start s", "end s", "raised", "after", "cleared", "ok"):
        table.add_column(column)
    for row in judgement["injected"]:
        after = ("%.2f hb" % row["delay_heartbeats"] if row.get("delay_heartbeats") is not None else
                 "%.0f s" % row["delay_s"] if row.get("delay_s") is not None else "-")
        raised = {"drift": "alarm" if row["detected"] else "none (right)",
                  "clean_stop": row.get("liveness") or "-"}.get(row["kind"], row.get("rule") or (
                      "silent" if row["kind"] == "silence" and row["detected"] else "NOTHING"))
        table.add_row(row["kind"], row["device"], "%.0f" % row["start"], "%.0f" % row["end"], raised, after,
                      "-" if row["cleared_at"] is None else "%.0f" % row["cleared_at"], "yes" if row["ok"] else "NO")
    console.print(table)
    console.print(f"Alarms matching no injection: {judgement['false_alarms']} "
                  f"({judgement['false_alarms_per_1000_device_days']:.2f} per 1000 device-days over "
                  f"{judgement['device_days']:.0f}); silences the links caused (nothing intact arrived for "
                  f"{SILENT_AFTER} heartbeat periods): {judgement['link_silences']}.", highlight=False)
    for event in judgement["unmatched"][:20]:
        console.print(f"  unmatched {event['kind']} {event['device']} at {event['t']:.0f}: {event['reason']}",
                      highlight=False)
