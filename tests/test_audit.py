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
from hub.service.storage.sqlite import Retention, SQLiteStorage, StorageError
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
    ("UPDATE device_status SET status = '{}' WHERE device = 'pump-2'", "device_status rows in slice"),
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
    events = storage.db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    assert events >= 6 and storage.audit() == (events, None)  # the event chain alone is intact
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


# -- the store's own state, keyed seals, foreign files, copies ------------------------------

@pytest.mark.parametrize("sql, located", [
    # Moving a sink's cursor would silently suppress delivery of the records it skips.
    ("INSERT INTO sinks VALUES ('mqtt://inner:1883', 0)", "the sinks' delivery cursors"),
    # The chain's head rewritten after cutting events off its end; a fake pruning anchor.
    ("UPDATE meta SET value = (SELECT prev_hash FROM events ORDER BY id DESC LIMIT 1) WHERE key = 'events_head'",
     "the store's own marks"),
    ("INSERT INTO meta VALUES ('events_anchor', '2 ' || (SELECT hash FROM events WHERE id = 2))",
     "the store's own marks"),
])
def test_the_stores_own_state_is_sealed(db, sql, located):
    edit(db, sql)
    result = audit(db)
    assert result.returncode == 1 and located in result.stdout, result.stdout


def test_cutting_events_off_either_end_of_the_chain_is_found(db):
    edit(db, "DELETE FROM events WHERE id = (SELECT MAX(id) FROM events)")
    edit(db, "UPDATE meta SET value = (SELECT hash FROM events ORDER BY id DESC LIMIT 1) WHERE key = 'events_head'")
    assert audit(db).returncode == 1
    edit(db, "DELETE FROM events WHERE id <= 2")
    edit(db, "INSERT OR REPLACE INTO meta VALUES ('events_anchor', '2 ' || (SELECT prev_hash FROM events WHERE id = 3))")
    result = audit(db)
    assert result.returncode == 1 and "the store's own marks" in result.stdout, result.stdout


def keyed_store(path, keyfile):
    """The db fixture's store as `hub run` leaves it: its seals keyed with the key file's seal key."""
    SQLiteStorage(path, create=False, seal_key=keyfile.seal_key()).close()


def test_keyed_seals_catch_an_editor_who_recomputes_them(db, keys):
    from hub.service.storage import seals

    keyed_store(db, keys)
    with_keys = lambda: subprocess.run([str(LINKSEAL), "hub", "audit", "--db", str(db), "--keys", str(keys.path),
                                        "--insecure-plaintext"], capture_output=True, text=True, timeout=60)
    clean = with_keys()
    assert clean.returncode == 0 and "OK: the seals are the hub's" in clean.stdout, clean.stdout
    # An editor who knows the format: move the sink cursor, and recompute every plain digest.
    editor = sqlite3.connect(db)
    editor.execute("INSERT INTO sinks VALUES ('postgresql://inner/plant', 600)")
    editor.execute(f"DELETE FROM seals WHERE tbl != '{seals.KEYED_ROW}'")
    editor.executemany("INSERT INTO seals VALUES (?, ?, ?)", [(table, seg, f"{digest:032x}") for (table, seg), digest
                                                              in seals.recompute(editor).items()])
    editor.commit()
    editor.close()
    without = audit(db)
    assert without.returncode == 0 and "NOT CHECKED: the seals are keyed" in without.stdout, without.stdout
    caught = with_keys()
    assert caught.returncode == 1 and "the seals themselves were rewritten" in caught.stdout, caught.stdout
    assert keys.seal_key().hex() not in caught.stdout + caught.stderr  # the key never shows


def test_a_keyed_store_is_written_only_with_its_key(db, keys, tmp_path):
    from hub.keys.keyfile import KeyFile

    keyed_store(db, keys)
    with pytest.raises(StorageError, match="sealed under another key file"):
        SQLiteStorage(db, create=False, seal_key=KeyFile.create(tmp_path / "other.keys").seal_key())
    storage = SQLiteStorage(db, create=False)  # for reading, as `hub report` does
    with pytest.raises(StorageError, match="open it with the hub's key file"):
        storage.prune_step(T0 + 10 * DAY2, Retention(records=0))
    storage.close()
    pruned = subprocess.run([str(LINKSEAL), "hub", "prune", "--db", str(db)], capture_output=True, text=True,
                            timeout=60)
    assert pruned.returncode == 2 and "--keys" in pruned.stderr and "Traceback" not in pruned.stderr


def test_a_file_that_is_not_a_hub_store_is_refused_and_left_alone(tmp_path):
    empty = tmp_path / "empty.db"
    empty.touch()
    other = tmp_path / "other.db"
    app = sqlite3.connect(other)
    app.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    app.commit()
    app.close()
    for path in (empty, other):
        before = path.read_bytes()
        for command in (["hub", "audit", "--db", str(path)], ["hub", "report", "--db", str(path)]):
            result = subprocess.run([str(LINKSEAL), *command], capture_output=True, text=True, timeout=60)
            assert result.returncode == 2 and "not a linkseal hub store" in result.stderr, (command, result.stderr)
            assert "Traceback" not in result.stderr
        assert path.read_bytes() == before  # no tables of ours added


def test_an_audit_of_a_copy_on_read_only_media_works(db, tmp_path):
    copy_dir = tmp_path / "ro"
    copy_dir.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(copy_dir)], capture_output=True,
                             text=True)
    if mounted.returncode:
        pytest.fail(f"this test mounts a tmpfs and needs root for it: {mounted.stderr.strip()}")
    try:
        (copy_dir / "hub.db").write_bytes(db.read_bytes())
        subprocess.run(["mount", "-o", "remount,ro", str(copy_dir)], check=True)
        result = audit(copy_dir / "hub.db")
        assert result.returncode == 0 and "BROKEN" not in result.stdout, result.stdout + result.stderr
    finally:
        subprocess.run(["umount", "-l", str(copy_dir)], check=True)
