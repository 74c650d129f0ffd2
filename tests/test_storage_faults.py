"""Storage faults pause the hub, never stop it: a full file system (a real tmpfs of the test's
own) and a database another process keeps locked. Nothing is acknowledged while storage
refuses writes, so the broker keeps the backlog; the hub resumes by itself and loses nothing."""

import errno
import signal
import sqlite3
import subprocess
import urllib.request

import pytest

from tools.services import HubProcess, frames_seen, free_port, publish, publish_paced, stored_report, wait_for

from .test_hub_service import sealed_stream, start_hub


@pytest.fixture
def small_filesystem(tmp_path):
    """A 4 MiB tmpfs mounted for this test (needs root, as `make test` runs on the CI machine)."""
    mount = tmp_path / "small-fs"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode:
        pytest.fail(f"the disk-full test mounts a small tmpfs and needs root for it: {result.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(directory):
    """Write a file until the file system is full; returns its path."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def events_named(hub, name):
    return [e for e in hub.events() if e["event"] == name]


def metric(port, line_start):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(line_start))


def test_disk_full_pauses_survives_a_restart_and_loses_nothing(tmp_path, broker, keys, small_filesystem):
    stream = sealed_stream(keys, devices=4, frames=150)
    first, second, third = stream[:200], stream[200:400], stream[400:]
    db = small_filesystem / "hub.db"
    port = free_port()
    hub = start_hub(tmp_path, broker, keys, "--metrics", f"127.0.0.1:{port}", db=db)
    try:
        publish(broker.port, first)
        wait_for(lambda: frames_seen(db) == len(first), 60, "the first part stored")
        filler = fill(small_filesystem)
        publish(broker.port, second)
        wait_for(lambda: events_named(hub, "storage_full"), 60, "the hub to report the full disk")
        assert hub.process.poll() is None, "the hub exited on a full disk"
        assert metric(port, 'linkseal_storage_fault{kind="storage_full"}') == 1.0
        reported = events_named(hub, "storage_full")
        assert len(reported) == 1 and "SQLITE_FULL" in reported[0]["error"], reported
        hub.signal(signal.SIGTERM)  # stopped while full: what was not stored stays with the broker
        assert hub.wait() == 0
    finally:
        hub.stop()

    again = HubProcess(broker, keys.path, db, tmp_path / "hub-again.log").start()
    try:  # still full: it waits instead of exiting (a service manager would restart it in a loop)
        wait_for(lambda: events_named(again, "storage_full") or again.process.poll() is not None, 60,
                 "the restarted hub to report the full disk")
        assert again.process.poll() is None, again.log.read_text()
        filler.unlink()
        wait_for(lambda: events_named(again, "storage_recovered"), 60, "the hub to resume by itself")
        again.wait_connected()
        publish(broker.port, third)
        wait_for(lambda: stored_report(db)["links"]["wifi"]["valid"] == len(stream), 60, "every frame stored")
        again.signal(signal.SIGTERM)
        assert again.wait() == 0
    finally:
        again.stop()
    wifi = stored_report(db)["links"]["wifi"]
    assert (wifi["valid"], wifi["lost"], wifi["duplicate"] + wifi["replay"]) == (len(stream), 0, 0)
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM records").fetchone()[0] == len(stream)


def test_a_disk_full_backlog_sent_within_the_rate_drains_whole(tmp_path, broker, keys, small_filesystem):
    """While the disk is full the hub's queue fills and the broker keeps the rest of a device's
    frames (49/s against a limit of 100/s, burst 10); once space is back every one is valid."""
    config = tmp_path / "hub.toml"
    config.write_text("[ingest]\nqueue_size = 20\nbatch_size = 10\n[rate_limits]\ndefault = { rate = 100, burst = 10 }\n")
    stream = sealed_stream(keys, devices=1, frames=160)
    db = small_filesystem / "hub.db"
    hub = start_hub(tmp_path, broker, keys, "--config", config, db=db)
    try:
        publish_paced(broker.port, stream[:10], 49)  # the device's pace throughout (10 at once would spend the burst)
        wait_for(lambda: frames_seen(db) == 10, 60, "the first frames stored")
        filler = fill(small_filesystem)
        publish_paced(broker.port, stream[10:], 49)
        wait_for(lambda: events_named(hub, "storage_full"), 60, "the hub to report the full disk")
        filler.unlink()
        wait_for(lambda: frames_seen(db) == len(stream), 60, "the backlog stored")
    finally:
        hub.stop()
    entry = stored_report(db)["devices"]["dev-0"]
    assert (entry["valid"], entry["rate_limited"], entry["lost"]) == (len(stream), 0, 0)


def test_a_database_locked_by_another_process_pauses_the_hub(tmp_path, broker, keys):
    stream = sealed_stream(keys, devices=2, frames=100)
    hub = start_hub(tmp_path, broker, keys)
    try:
        publish(broker.port, stream[:50])
        wait_for(lambda: frames_seen(hub.db) == 50, 60, "the first frames stored")
        holder = sqlite3.connect(hub.db, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # a backup tool, say, holding the write lock
        publish(broker.port, stream[50:])
        wait_for(lambda: events_named(hub, "storage_locked"), 60, "the hub to report the lock")
        assert hub.process.poll() is None
        assert "SQLITE_BUSY" in events_named(hub, "storage_locked")[0]["error"]
        holder.execute("ROLLBACK")
        holder.close()
        wait_for(lambda: events_named(hub, "storage_recovered"), 60, "the hub to resume")
        wait_for(lambda: stored_report(hub.db)["links"]["wifi"]["valid"] == len(stream), 60, "every frame")
    finally:
        hub.stop()
    assert sqlite3.connect(hub.db).execute("SELECT COUNT(*) FROM records").fetchone()[0] == len(stream)


def test_locked_at_start_up_is_not_called_damaged(tmp_path, broker, keys):
    from hub.service.storage.sqlite import SQLiteStorage, StorageError

    SQLiteStorage(tmp_path / "hub.db").close()
    holder = sqlite3.connect(tmp_path / "hub.db", isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StorageError, match="locked by another process.*not damaged"):
            SQLiteStorage(tmp_path / "hub.db", create=False)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
