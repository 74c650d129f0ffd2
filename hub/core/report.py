"""The per-link / per-device report: one schema for `hub verify`, `hub report` and the simulator.

{"links": {LINK: ENTRY + {"abnormal": [REASON...]}}, "devices": {DEVICE_ID: ENTRY + {"link": LINK}},
 "unknown_device": N, "events": [{"t", "device", "link", "kind", "reason"}]}
ENTRY holds the integer counters of hub.counters.REPORTED and the figures below.
"""

import json

from hardware.link_registry import load_links
from hub.core.counters import (
    BURSTS,
    L2R,
    LINK_SLOT_NAMES,
    LOST,
    R2L,
    SLOT_NAMES,
    UNSURE_ON_DEVICE,
    VALID,
    as_dict,
    new_counters,
    new_link_counters,
)
from hub.core.loss_model import ge_fit, loss_interval, wilson_interval
from hub.core.radio import link_figures


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def entry(counters) -> dict:
    """Report entry for one counter array (a device or a link)."""
    out = as_dict(counters)
    # Gaps left by records the device dropped itself, or that a reset destroyed on it, are not
    # the link's doing.
    out["lost"] = max(0, out["lost"] - out["source_drops"] - out["lost_on_device"])
    out["lost_on_device_max"] = out["lost_on_device"] + int(counters[UNSURE_ON_DEVICE])
    lost, valid = out["lost"], out["valid"]
    expected = valid + lost  # RFC 3550: expected = received (unique) + lost
    out["loss_rate"] = _ratio(lost, expected)
    # Losses come in bursts, so they are not independent trials (hub.core.loss_model). Where
    # the pattern moments are missing, a simple Gilbert chain's mean has its variance inflated
    # by (1 + rho) / (1 - rho), rho = 1 - p - r its lag-1 correlation.
    rho = min(0.99, max(0.0, 1.0 - _ratio(counters[R2L], counters[VALID]) - _ratio(counters[L2R], counters[LOST])))
    out["loss_rate_ci"], out["loss_rate_ci_method"] = loss_interval(counters, lost, expected, (1 + rho) / (1 - rho))
    out["corrupt_rate"] = _ratio(out["corrupt"], out["received"])
    out["corrupt_rate_ci"] = wilson_interval(out["corrupt"], out["received"])
    # Observed transition rates: p = P(lost | previous received), r = P(received | previous
    # lost); netem's p and r only for the simple Gilbert model (1-h = 1, 1-k = 0). Mean burst
    # length = lost / loss runs.
    out["burst_mean"] = _ratio(lost, counters[BURSTS])
    out["ge_p"] = _ratio(counters[R2L], counters[VALID])
    out["ge_r"] = _ratio(counters[L2R], counters[LOST])
    return out


def link_entry(counters) -> dict:
    """A link's entry: a device's figures and the Gilbert-Elliott fit of its loss sequence."""
    out = entry(counters)
    out["ge_fit"], out["ge_fit_reason"] = ge_fit(counters)
    return out


def abnormal_reasons(name: str, link_entry: dict, registry: dict | None = None) -> list:
    """Why a link looks abnormal for its kind; empty when it does not.

    Flagged only when the excess is significant: the whole Wilson 95% interval of the
    observed rate lies above the rate hardware/links expects of that kind of link.
    """
    expected = (registry or load_links()).get(name)
    if expected is None:
        return []
    reasons = []
    if link_entry["loss_rate_ci"][0] > expected.frame_loss:
        reasons.append(f"loss {link_entry['loss_rate']:.3%} is above the {expected.frame_loss:.3%} "
                       f"expected of {name} (95% interval from {link_entry['loss_rate_ci'][0]:.3%})")
    if link_entry["corrupt_rate_ci"][0] > expected.corrupt:
        reasons.append(f"corruption {link_entry['corrupt_rate']:.3%} is above the {expected.corrupt:.3%} "
                       f"expected of {name} (95% interval from {link_entry['corrupt_rate_ci'][0]:.3%})")
    return reasons


def _link_entries(links: dict) -> dict:
    registry = load_links()
    entries = {}
    for name, counters in links.items():
        item = link_entry(counters)
        item["abnormal"] = abnormal_reasons(name, item, registry)
        entries[name] = item
    return entries


def _assemble(links: dict, devices: dict, device_links: dict, unknown: int, events: list, statuses: dict,
              radio: dict) -> dict:
    """statuses: device -> the fields of its latest status message (hub/core/status.py; empty
    until one arrived: a LoRaWAN device's radio figures are kept beside it from its first uplink);
    radio: device -> RadioState, for devices whose uplinks came with radio figures (LoRaWAN)."""
    for device in statuses:
        devices.setdefault(device, new_counters())
    report = {
        "links": _link_entries(links),
        "devices": {device: {**entry(counters), "link": device_links[device], "status": statuses.get(device) or None,
                             **_liveness(statuses.get(device), counters)}
                    for device, counters in devices.items()},
        "unknown_device": unknown,
        "events": events,
    }
    count_silent(report["links"], statuses, device_links)
    add_radio(report["links"], report["devices"], radio, device_links)
    return report


def count_silent(links: dict, statuses: dict, device_links: dict) -> None:
    """`silent_devices` in each link's entry: what the operator looks for first."""
    for item in links.values():
        item["silent_devices"] = 0
    for device, fields in statuses.items():
        if (fields or {}).get("liveness") == "silent" and device_links.get(device) in links:
            links[device_links[device]]["silent_devices"] += 1


def _liveness(fields, counters) -> dict:
    """`liveness` (online, offline, silent; None for a device never heard authentic) and
    `liveness_since` (None when it has been online since before the hub kept it)."""
    fields = fields or {}
    if "liveness" in fields:
        return {"liveness": fields["liveness"], "liveness_since": fields.get("liveness_since")}
    heard = counters[VALID] or fields.get("last") is not None
    return {"liveness": "online" if heard else None, "liveness_since": None}


def add_radio(links: dict, devices: dict, radio: dict, device_links: dict) -> None:
    """`radio` in the entries of devices that have radio figures and of their links."""
    by_link = {}
    for device, state in radio.items():
        if device in devices:
            devices[device]["radio"] = state.figures()
        by_link.setdefault(device_links.get(device), []).append(state)
    for name, states in by_link.items():
        if name in links:
            links[name]["radio"] = link_figures(states)


def build_report(verifier, events=None) -> dict:
    """The report of everything a verifier has seen (`hub verify`, the simulator); events:
    the security events when they were drained from the verifier meanwhile (`hub verify`)."""
    devices, device_links = {}, {}
    for device, link, counters in verifier.devices():
        devices[device], device_links[device] = counters, link
    statuses = {device: dict(status.fields) for device, status in verifier.status.items()}
    radio = {device: status.radio for device, status in verifier.status.items() if status.radio is not None}
    events = list(verifier.events) if events is None else events
    return _assemble(dict(verifier.links()), devices, device_links, verifier.unknown_device, events, statuses, radio)


def build_stored_links(storage) -> tuple[dict, int]:
    """(the report's links, unknown_device) from storage, without the devices (the console)."""
    links, unknown = {}, 0
    for scope, name, counter, total in storage.counts_since(None, scopes=("link", "hub")):
        if scope == "hub":
            unknown += total
        else:
            links.setdefault(name, new_link_counters())[LINK_SLOT_NAMES.index(counter)] = total
    entries = _link_entries(links)
    device_links = storage.device_links()
    count_silent(entries, storage.device_statuses('"silent"')[0], device_links)  # only those statuses parsed
    add_radio(entries, {}, storage.device_radio(), device_links)
    return entries, unknown


def build_stored_devices(storage, names: list) -> dict:
    """The report's entries of these devices only (the console's search), from storage."""
    counters = {name: new_counters() for name in names}
    for name, counter, total in storage.device_counts(names):
        counters[name][SLOT_NAMES.index(counter)] = total
    device_links, (statuses, radio) = storage.device_links(), storage.device_statuses()
    devices = {name: {**entry(c), "link": device_links.get(name), "status": statuses.get(name) or None,
                      **_liveness(statuses.get(name), c)} for name, c in counters.items()}
    add_radio({}, devices, radio, device_links)
    return devices


def build_stored_report(storage, since: float | None = None, link: str | None = None) -> dict:
    """The report over what storage holds (`hub report`), from the minute holding `since`."""
    since_minute = None if since is None else int(since // 60) * 60
    links, devices, unknown = {}, {}, 0
    for scope, name, counter, total in storage.counts_since(since_minute):
        if scope == "hub":
            unknown += total
            continue
        if scope == "link":
            links.setdefault(name, new_link_counters())[LINK_SLOT_NAMES.index(counter)] = total
        else:
            devices.setdefault(name, new_counters())[SLOT_NAMES.index(counter)] = total
    device_links = storage.device_links()
    statuses, radio = storage.device_statuses()
    events = storage.events_since(since)
    if link is not None:
        links = {name: c for name, c in links.items() if name == link}
        devices = {d: c for d, c in devices.items() if device_links.get(d) == link}
        statuses = {d: s for d, s in statuses.items() if device_links.get(d) == link}
        radio = {d: s for d, s in radio.items() if device_links.get(d) == link}
        events = [e for e in events if e["link"] == link]
    return _assemble(links, devices, device_links, unknown, events, statuses, radio)


_ENCODER = json.JSONEncoder(indent=2, sort_keys=True)


def to_json(report: dict) -> str:
    return _ENCODER.encode(report)


def write_json(report: dict, stream) -> None:
    """to_json(report) written piece by piece: a report whose events are spooled on disk
    (shared.capture.EventSpool) is never held in memory whole."""
    for chunk in _ENCODER.iterencode(report):
        stream.write(chunk)
    stream.write("\n")
