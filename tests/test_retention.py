"""Retention with an injected clock: delivered records go, counters roll up with their totals
kept, old security events go behind an anchor that audit verifies from, floods stay bounded,
and the database file stops growing under a steady stream."""

import json
import random
import subprocess
import time

from agent import Sealer, topic_for
from hardware.link_registry import links_by_code
from hub.core.report import build_stored_report
from hub.core.verifier import EVENT_SAMPLES, DeviceKeys, Verifier
from hub.service.ingest import Ingest
from hub.service.storage.sqlite import DAY, HOUR, Outbox, Retention, SQLiteStorage
from tools.services import LINKSEAL

KEY = bytes(range(32))
T0 = float(int(time.time() // DAY - 40) * DAY)  # 40 days ago at midnight: `--since 90d` covers it all
LINKS = {code: link.name for code, link in links_by_code().items()}
COUNTERS = ("received", "valid", "lost", "forged", "duplicate", "replay", "corrupt")


def hub(db, devices):
    verifier = Verifier([DeviceKeys(d, {0: KEY}, "wifi", 16) for d in devices], LINKS)
    return Ingest(verifier, SQLiteStorage(db))


def prune_all(storage, now, retention):
    total = {}
    while True:
        done = storage.prune_step(now, retention, limit=500)
        if not any(done.values()):
            return total
        for key, value in done.items():
            total[key] = total.get(key, 0) + value


def totals(report):
    return {name: {k: entry[k] for k in COUNTERS} for name, entry in report["links"].items()}, \
        {name: {k: entry[k] for k in COUNTERS} for name, entry in report["devices"].items()}, report["unknown_device"]


def twenty_days(ingest, devices=("pump-1", "pump-2")):
    """A record per device every 10 minutes for 20 days, with some loss, a forgery and an
    unknown device every 6 hours; commits every simulated hour."""
    rng = random.Random(3)
    sealers = {d: Sealer(d, KEY, link="wifi", epoch=1) for d in devices}
    forger = Sealer("pump-1", b"\x01" * 32, link="wifi", epoch=1)
    t, step = T0, 0
    while t < T0 + 20 * DAY:
        for device, sealer in sealers.items():
            frame = sealer.seal(b"reading at %d" % t)
            if rng.random() > 0.02:
                ingest.handle(topic_for(device), frame, t)
        if step % 36 == 0:  # every 6 hours
            forger.seq = sealers["pump-1"].seq + 5
            ingest.handle(topic_for("pump-1"), forger.seal(b"forged"), t + 1)
            ingest.handle(topic_for("stranger"), b"\x10" * 30, t + 2)
        t, step = t + 600, step + 1
        if step % 6 == 0:
            ingest.commit()
    ingest.commit()
    return t


def test_retention_prunes_rolls_up_and_keeps_every_total(tmp_path):
    db = tmp_path / "hub.db"
    ingest = hub(db, ("pump-1", "pump-2"))
    storage = ingest.storage
    now = twenty_days(ingest)
    storage.set_sinks(["mqtt://inner:1883"])
    outbox = Outbox(db)
    total_records = storage.db.execute("SELECT COUNT(*) FROM records").fetchone()[0]
    # The sink has acknowledged everything older than 10 days only.
    cursor = storage.db.execute("SELECT MAX(id) FROM records WHERE arrival < ?", (now - 10 * DAY,)).fetchone()[0]
    outbox.mark_delivered("mqtt://inner:1883", cursor)
    before = totals(build_stored_report(storage))
    events_before = storage.db.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    retention = Retention(records=3 * DAY, minute_counts=1 * DAY, hourly_counts=5 * DAY, events=15 * DAY)
    done = prune_all(storage, now, retention)

    # Records: delivered and older than 3 days are gone; undelivered ones stay whatever their age.
    left = storage.db.execute("SELECT MIN(id), MIN(arrival), COUNT(*) FROM records").fetchone()
    assert left[0] == cursor + 1 and left[1] >= now - 10 * DAY
    assert done["records"] == total_records - left[2] == cursor
    # Counters: hours after a day, days after five; the totals are exactly as before.
    rows = storage.db.execute("SELECT minute FROM counts").fetchall()
    assert all(m % HOUR == 0 for (m,) in rows if m < now - DAY - HOUR)
    assert all(m % DAY == 0 for (m,) in rows if m < now - 5 * DAY - DAY)
    assert any(m % HOUR != 0 for (m,) in rows if m >= now - DAY)  # recent minutes untouched
    assert totals(build_stored_report(storage)) == before
    # Events: those older than 15 days are gone; the chain still verifies, from the anchor.
    assert 0 < done["events"] < events_before
    assert storage.events_anchor()[0] == done["events"]
    assert storage.audit() == (events_before - done["events"], None)
    # Pruning again does nothing more.
    assert not any(storage.prune_step(now, retention).values())
    storage.close()
    outbox.close()

    # The commands over the pruned file: long-span report totals and the audit from the anchor.
    report = json.loads(subprocess.run([str(LINKSEAL), "hub", "report", "--db", str(db), "--since", "90d", "--json"],
                                       capture_output=True, text=True, check=True).stdout)
    assert totals(report) == before
    audit = subprocess.run([str(LINKSEAL), "hub", "audit", "--db", str(db)], capture_output=True, text=True)
    assert audit.returncode == 0 and "from the pruning anchor" in audit.stdout, audit.stdout


def test_audit_still_catches_a_removed_event_after_pruning(tmp_path):
    db = tmp_path / "hub.db"
    ingest = hub(db, ("pump-1", "pump-2"))
    now = twenty_days(ingest)
    storage = ingest.storage
    prune_all(storage, now, Retention(events=10 * DAY))
    anchor = storage.events_anchor()[0]
    storage.db.execute("DELETE FROM events WHERE id = ?", (anchor + 3,))
    checked, broken = storage.audit()
    assert checked == 2 and "does not follow" in broken
    storage.db.execute("DELETE FROM events WHERE id = ?", (anchor + 1,))  # right behind the anchor
    assert storage.audit()[0] == 0


def test_hub_prune_command_on_a_stopped_hub(tmp_path):
    db = tmp_path / "hub.db"
    ingest = hub(db, ("pump-1",))
    twenty_days(ingest, ("pump-1",))
    ingest.storage.close()
    config = tmp_path / "hub.toml"
    config.write_text('[retention]\nrecords = "1d"\nevents = "1d"\n')
    result = subprocess.run([str(LINKSEAL), "hub", "prune", "--db", str(db), "--config", str(config)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "pruned 2" in result.stdout and "bytes handed back" in result.stdout
    storage = SQLiteStorage(db, create=False)
    assert storage.db.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 0  # all older than a day
    assert storage.audit()[1] is None
    bad = subprocess.run([str(LINKSEAL), "hub", "prune", "--db", str(db), "--config", str(tmp_path / "none.toml")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "no such config file" in bad.stderr and "Traceback" not in bad.stderr


def test_an_unknown_device_flood_adds_a_bounded_number_of_events(tmp_path):
    ingest = hub(tmp_path / "hub.db", ("pump-1",))
    rng = random.Random(1)
    for i in range(100_000):  # random device ids over two minutes
        ingest.handle(f"linkseal/v1/x{rng.getrandbits(48):x}/rec", b"\x10" * 40, T0 + i * 0.0012)
    ingest.commit()
    report = build_stored_report(ingest.storage)
    assert report["unknown_device"] == 100_000  # every frame counted
    events = ingest.storage.db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    assert events == 2 * (EVENT_SAMPLES + 1)  # ten examples and one "the rest are counted" a minute


def test_database_file_stops_growing_under_a_steady_stream(tmp_path):
    db = tmp_path / "hub.db"
    devices = [f"meter-{i}" for i in range(10)]
    ingest = hub(db, devices)
    sealers = [Sealer(d, KEY, link="wifi", epoch=1) for d in devices]
    retention = Retention(records=HOUR, minute_counts=HOUR, hourly_counts=DAY, events=DAY)
    sizes = []
    t = T0
    for step in range(16 * 12):  # 16 simulated hours in 5-minute steps, 2 records a second in all
        for second in range(0, 300, 5):
            for sealer in sealers:
                ingest.handle(topic_for(sealer.device_id), sealer.seal(b"x" * 120), t + second)
        ingest.commit()
        t += 300
        prune_all(ingest.storage, t, retention)
        if step % 12 == 11:
            ingest.storage.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            sizes.append(db.stat().st_size)
    # After the first hours fill the retention window, the file holds its size.
    assert sizes[-1] <= sizes[5] * 1.05, sizes
    assert sizes[5] > sizes[0], sizes


def test_per_device_counter_history_expires_and_link_totals_stay(tmp_path):
    ingest = hub(tmp_path / "hub.db", ("pump-1", "pump-2"))
    now = twenty_days(ingest)
    storage = ingest.storage
    links_before, devices_before, unknown_before = totals(build_stored_report(storage))
    prune_all(storage, now, Retention(device_counts=5 * DAY))
    links_after, devices_after, unknown_after = totals(build_stored_report(storage))
    assert (links_after, unknown_after) == (links_before, unknown_before)
    assert devices_after["pump-1"]["received"] < devices_before["pump-1"]["received"] / 3
    oldest = storage.db.execute("SELECT MIN(minute) FROM counts WHERE scope = 'device'").fetchone()[0]
    assert oldest >= now - 5 * DAY
    assert storage.load().unknown_device == unknown_before  # what a restarted hub counts on from


def test_release_space_hands_back_every_free_page(tmp_path):
    from hub.service.storage.sqlite import Retention, SQLiteStorage

    from .test_storage import TOPIC, frames, open_ingest

    ingest = open_ingest(tmp_path / "hub.db")
    for i, frame in enumerate(frames(20000)):
        ingest.handle(TOPIC, frame, 1000.0 + i)
        if i % 500 == 0:
            ingest.commit()
    ingest.commit()
    ingest.storage.close()
    storage = SQLiteStorage(tmp_path / "hub.db", create=False)
    while any(storage.prune_step(1e9, Retention(records=0, events=0)).values()):
        pass
    free, pages = (storage.db.execute(f"PRAGMA {name}").fetchone()[0] for name in ("freelist_count", "page_count"))
    assert free > pages / 2  # most of the file is free pages now
    released = storage.release_space()
    assert storage.db.execute("PRAGMA freelist_count").fetchone()[0] == 0
    assert released >= free * storage.db.execute("PRAGMA page_size").fetchone()[0] * 0.9
    storage.close()
