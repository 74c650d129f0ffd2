"""`hub audit` covers everything the reports are built from: SQLite's integrity check, the
security events' hash chain, and the seals over records, counters, device state, link
counters and device status. Any row changed, added or removed outside the hub is found and
located; retention pruning is not mistaken for a deletion; a damaged file is refused."""

import sqlite3
import subprocess

import pytest

from agent import Sealer, topic_for
from agent import frame as wire
from agent.status import HEARTBEAT, status_payload
from hub.core.report import build_stored_report
from hub.service.storage import Retention, SQLiteStorage, StorageError
from tools.services import LINKSEAL

from .test_storage import KEY, open_ingest

T0 = 1_800_000_000.0
DAY2 = 2 * 86400


def forge(frame: bytes) -> bytes:
    body = bytearray(frame[:-4])
    body[-1] ^= 1  # a tag byte: the CRC is made to match, so only the MAC can tell
    return bytes(body) + wire.crc_trailer(bytes(body))


@pytest.fixture
def db(tmp_path):
    """A hub database with records on two links over two days, forged frames (events and
    counters) and a status message; closed, as `hub audit` finds it."""
    path = tmp_path / "hub.db"
    ingest = open_ingest(path)
    pump, monitor = Sealer("pump-1", KEY, link="wifi", epoch=1), Sealer("pump-2", KEY, link="ble", epoch=1)
    for i in range(300):
        t = T0 + i * 600  # every 10 minutes: a little over two days
        ingest.handle(topic_for("pump-1"), pump.seal(b"%d" % i), t)
        ingest.handle(topic_for("pump-2"), monitor.seal(b"%d" % i), t)
        if i % 50 == 0:
            ingest.handle(topic_for("pump-1"), forge(pump.seal(b"x")), t)
        if i % 20 == 0:
            ingest.commit()
    status = monitor.seal_status(status_payload(HEARTBEAT, monitor, queued=0, source_drops=0))
    ingest.handle("linkseal/v1/pump-2/status", status, T0 + 300 * 600)
    ingest.commit()
    ingest.storage.close()
    return path


def audit(path):
    return subprocess.run([str(LINKSEAL), "hub", "audit", "--db", str(path)], capture_output=True, text=True,
                          timeout=60)


def edit(path, sql, *params):
    db = sqlite3.connect(path)
    changed = db.execute(sql, params).rowcount
    db.commit()
    db.close()
    assert changed, sql


def test_an_untouched_store_passes(db):
    result = audit(db)
    assert result.returncode == 0, result.stdout
    assert result.stdout.count("OK:") == 3 and "BROKEN" not in result.stdout


@pytest.mark.parametrize("sql, located", [
    ("DELETE FROM counts WHERE counter = 'forged' AND scope = 'link' AND minute = "
     "(SELECT MIN(minute) FROM counts WHERE counter = 'forged')", "counters of 2027-01-15"),
    ("UPDATE counts SET value = value + 1 WHERE counter = 'valid' AND scope = 'device' AND name = 'pump-2' "
     "AND minute = (SELECT MAX(minute) FROM counts)", "counters of 2027-01-17"),
    ("UPDATE records SET payload = X'00' WHERE id = 500", "records with ids 0-4095"),
    ("DELETE FROM records WHERE id = 17", "records with ids 0-4095"),
    ("INSERT INTO records (device, epoch, seq, link, device_time_ms, arrival, payload) "
     "VALUES ('pump-1', 1, 999999, 'wifi', NULL, 0, X'01')", "records with ids"),
    ("DELETE FROM devices WHERE device = 'pump-1'", "devices rows in slice"),
    ("UPDATE links SET state = X'00' WHERE link = 'ble'", "link counters"),
    ("UPDATE device_status SET status = '{}'", "device_status rows in slice"),
])
def test_any_row_changed_or_removed_is_found_and_located(db, sql, located):
    edit(db, sql)
    result = audit(db)
    assert result.returncode == 1, result.stdout
    broken = [line for line in result.stdout.splitlines() if line.startswith("BROKEN")]
    assert len(broken) == 1 and located in broken[0], result.stdout
    assert "OK: SQLite integrity check" in result.stdout  # SQLite sees nothing wrong: only the seals do


def test_the_counts_edit_that_fooled_the_old_audit_is_found(db):
    """Deleting the forged counters made the report say 0 forged beside 7 forged events."""
    edit(db, "DELETE FROM counts WHERE counter = 'forged'")
    storage = SQLiteStorage(db, create=False)
    assert build_stored_report(storage)["links"]["wifi"]["forged"] == 0
    assert storage.audit() == (6, None)  # the event chain alone is intact
    assert storage.seal_problems()
    storage.close()


def test_pruning_is_not_a_deletion(db):
    storage = SQLiteStorage(db, create=False)
    now = T0 + 300 * 600 + 3600
    while any(storage.prune_step(now, Retention(records=0, minute_counts=3600, hourly_counts=DAY2, device_counts=DAY2,
                                                events=DAY2)).values()):
        pass
    remaining = storage.db.execute("SELECT COUNT(*) FROM records").fetchone()[0]
    storage.close()
    assert remaining == 0
    result = audit(db)
    assert result.returncode == 0, result.stdout
    assert "records 1-600 were pruned by retention" in result.stdout
    edit(db, "DELETE FROM counts WHERE minute = (SELECT MIN(minute) FROM counts) AND counter = 'valid' "
             "AND scope = 'link'")
    assert audit(db).returncode == 1


def test_a_schema_2_store_is_sealed_on_first_open(db):
    edit(db, "DELETE FROM seals")
    edit(db, "UPDATE meta SET value = '2' WHERE key = 'schema'")
    SQLiteStorage(db, create=False).close()
    assert audit(db).returncode == 0


def damage(path):
    """Overwrite the records table's root page header: a b-tree SQLite can no longer walk."""
    db = sqlite3.connect(path)
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'records'").fetchone()[0]
    db.close()
    with open(path, "r+b") as handle:
        handle.seek((root - 1) * page_size)
        handle.write(b"\x42" * 12)


def test_a_damaged_store_is_refused_by_report_and_run_and_named_by_audit(db, tmp_path, keys):
    damage(db)
    result = audit(db)
    assert result.returncode == 1 and "BROKEN: SQLite integrity check" in result.stdout, result.stdout
    report = subprocess.run([str(LINKSEAL), "hub", "report", "--db", str(db)], capture_output=True, text=True)
    assert report.returncode == 2 and "the database is damaged" in report.stderr and "Traceback" not in report.stderr
    run = subprocess.run([str(LINKSEAL), "hub", "run", "--broker", "mqtt://127.0.0.1:1", "--keys", str(keys.path),
                          "--insecure-plaintext", "--db", str(db)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "the database is damaged" in run.stderr, run.stderr
    with pytest.raises(StorageError, match="damaged"):
        storage = SQLiteStorage(db, create=False)
        try:
            storage.require_sound()
        finally:
            storage.close()
