"""The console's JSON API (/api/v1/...): what its pages read, in the report's own shapes.

Pure functions over a store reader (SQLiteReader, or anything with its reading methods), so
the HTTP adapter (hub/service/console/server.py) only routes and escapes nothing: the browser puts
every string in the page as text. Payloads are never included: records may be patient data,
and the console shows counts, ids and reasons only. docs/console-openapi.json describes it.
"""

import time

from hardware.link_registry import load_links
from hub.core.counters import SLOT_NAMES, new_counters
from hub.core.report import build_stored_devices, build_stored_links, entry

# Chart spans: how far back, and the bucket each point sums (the stored per-minute rows are
# rolled up into hours after 14 days and days after 90, docs/hub.md: Retention).
SPANS = {"15m": (900, 60), "1h": (3600, 60), "24h": (86400, 900), "7d": (7 * 86400, 3600),
         "90d": (90 * 86400, 86400)}
EVENT_KINDS = ("forged", "replay", "unknown_device", "abnormal_link", "birth", "death", "unencrypted", "epoch_reuse",
               "silent", "back", "behaviour_alarm", "behaviour_clear")
MAX_DEVICES = 500
MAX_EVENTS = 500


class NotFound(Exception):
    """Nothing at that path: 404."""


class BadRequest(ValueError):
    """A query parameter out of range: 400 with the reason."""


def links(reader) -> dict:
    """The report's links, and what hardware/links expects of each kind of link beside them."""
    entries, unknown = build_stored_links(reader)
    registry = load_links()
    expected = {name: {"frame_loss": registry[name].frame_loss, "corrupt": registry[name].corrupt}
                for name in entries if name in registry}
    return {"links": entries, "expected": expected, "unknown_device": unknown, "generated_at": time.time()}


def devices(reader, query: str = "", link: str | None = None, limit: int = 100) -> dict:
    """Devices whose id contains `query` (case-insensitive), on `link` if given, by id."""
    if not 1 <= limit <= MAX_DEVICES:
        raise BadRequest(f"limit must be 1..{MAX_DEVICES}")
    needle = query.lower()
    matching = sorted(d for d, on in reader.device_links().items()
                      if needle in d.lower() and (link is None or on == link))
    return {"devices": build_stored_devices(reader, matching[:limit]), "total": len(matching)}


def device(reader, device_id: str, span: str = "24h") -> dict:
    """One device: its report entry, its recent security events and its loss over time."""
    if device_id not in reader.device_links():
        raise NotFound(f"no device {device_id!r} in this hub's store")
    events = reader.events_after(0, MAX_EVENTS * 10, device=device_id)[-MAX_EVENTS:]
    return {"device": build_stored_devices(reader, [device_id])[device_id], "events": events,
            "series": _series(reader, "device", device_id, span)}


MAX_ID = 2**63 - 1  # event ids are SQLite / PostgreSQL bigints
WATCH_EVENT_PAGES = 40  # alarm and clear events read to know who is in alarm now, in pages of MAX_EVENTS


def watch(reader) -> dict:
    """The watch (docs/behaviour.md): devices silent or offline now, devices in alarm now (their
    latest behaviour_alarm with no behaviour_clear since), and both counted per link type."""
    statuses, _ = reader.device_statuses()
    links = reader.device_links()
    quiet = [{"device": device, "link": links.get(device), "liveness": fields["liveness"],
              "since": fields.get("liveness_since")}
             for device, fields in sorted(statuses.items()) if fields.get("liveness") in ("silent", "offline")]
    silent_by_link = {}
    for item in quiet:
        if item["liveness"] == "silent":
            silent_by_link[item["link"]] = silent_by_link.get(item["link"], 0) + 1
    changes = []
    for kind in ("behaviour_alarm", "behaviour_clear"):
        after = 0
        for _ in range(WATCH_EVENT_PAGES):
            page = reader.events_after(after, MAX_EVENTS, kind)
            changes += page
            if len(page) < MAX_EVENTS:
                break
            after = page[-1]["id"]
    open_alarms = {}
    for event in sorted(changes, key=lambda e: e["id"]):
        key = (event["device"], event["reason"].split(":", 1)[0])
        if event["kind"] == "behaviour_alarm":
            open_alarms[key] = event
        else:
            open_alarms.pop(key, None)
    alarms = [{"device": device, "link": event["link"], "behaviour": rule, "since": event["t"],
               "reason": event["reason"]} for (device, rule), event in sorted(open_alarms.items())]
    by_behaviour = {}
    for alarm in alarms:
        counts = by_behaviour.setdefault(alarm["behaviour"], {})
        counts[alarm["link"]] = counts.get(alarm["link"], 0) + 1
    return {"quiet": quiet[:MAX_DEVICES], "quiet_total": len(quiet), "silent_by_link": silent_by_link,
            "alarms": alarms[:MAX_DEVICES], "alarms_total": len(alarms), "alarms_by_behaviour": by_behaviour,
            "generated_at": time.time()}


def event_id(text) -> int:
    """An `after` parameter: an event id, 0..MAX_ID."""
    value = int(text)
    if not 0 <= value <= MAX_ID:
        raise BadRequest(f"after must be 0..{MAX_ID}")
    return value


def events(reader, after: int = 0, limit: int = 100, kind=None, link=None, device=None) -> dict:
    after = event_id(after)
    if not 1 <= limit <= MAX_EVENTS:
        raise BadRequest(f"limit must be 1..{MAX_EVENTS}")
    if kind is not None and kind not in EVENT_KINDS:
        raise BadRequest(f"kind must be one of {', '.join(EVENT_KINDS)}")
    found = reader.events_after(after, limit, kind, link, device)
    return {"events": found, "last_id": found[-1]["id"] if found else after}


def series(reader, link: str, span: str = "1h") -> dict:
    return _series(reader, "link", link, span)


def audit(reader) -> dict:
    checked, broken = reader.audit()
    return {"events_checked": checked, "chain_intact": broken is None, "problem": broken}


def _series(reader, scope: str, name: str, span: str) -> dict:
    """Per bucket: loss rate (lost over expected), corruption rate (corrupt over received). The
    span ends at the newest stored minute: now for a running hub, the last data of a stopped one
    (or of a simulation, whose clock starts at 0)."""
    if span not in SPANS:
        raise BadRequest(f"span must be one of {', '.join(SPANS)}")
    length, bucket = SPANS[span]
    latest = reader.latest_minute()
    now = min(time.time(), latest + 60) if latest is not None else time.time()
    start = int((now - length) // bucket) * bucket
    wanted = ("valid", "lost", "corrupt", "duplicate", "forged", "replay", "malformed", "rate_limited",
              "source_drops", "lost_on_device")
    buckets = {}
    for minute, counter, value in reader.counts_by_minute(scope, name, start, wanted):
        counters = buckets.setdefault(int(minute // bucket) * bucket, new_counters())
        counters[SLOT_NAMES.index(counter)] += value
    times = list(range(start, int(now) + 1, bucket))
    loss, corrupt, forged = [], [], []
    for t in times:
        item = entry(buckets[t]) if t in buckets else None
        loss.append(item["loss_rate"] if item and item["valid"] + item["lost"] else None)
        corrupt.append(item["corrupt_rate"] if item and item["received"] else None)
        forged.append(item["forged"] + item["replay"] if item else 0)
    return {"scope": scope, "name": name, "span": span, "bucket_s": bucket, "t": times, "loss_rate": loss,
            "corrupt_rate": corrupt, "security_events": forged}
