"""Hub storage: the interface the ingest path needs, and its SQLite implementation.

One `commit(batch)` writes a batch's accepted records, its counter changes (per-minute
buckets per link and per device), its security events and the verifier state of every
device it touched, in one transaction: after a crash the stored state and the stored
records never disagree, so a frame accepted before is never accepted again.

A PostgreSQL backend would implement the same five methods; the verifier never sees SQL.
"""

import hashlib
import json
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

SCHEMA_VERSION = 1
GENESIS_HASH = "0" * 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    device TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL, link TEXT NOT NULL,
    device_time_ms INTEGER, arrival REAL NOT NULL, payload BLOB NOT NULL,
    PRIMARY KEY (device, epoch, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counts (
    minute INTEGER NOT NULL, scope TEXT NOT NULL, name TEXT NOT NULL, counter TEXT NOT NULL,
    value INTEGER NOT NULL, PRIMARY KEY (minute, scope, name, counter)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS devices (device TEXT PRIMARY KEY, link TEXT NOT NULL, state BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS links (link TEXT PRIMARY KEY, state BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS device_status (device TEXT PRIMARY KEY, status TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, t REAL NOT NULL, device TEXT, link TEXT,
    kind TEXT NOT NULL, reason TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_t ON events (t);
"""


class StorageError(Exception):
    """The database cannot be opened or is not a linkseal hub database."""


@dataclass
class Batch:
    """Everything one commit writes."""

    records: list = field(default_factory=list)  # (device, epoch, seq, link, device_time_ms, arrival, payload)
    counts: list = field(default_factory=list)  # (minute, scope, name, counter, delta): scope device|link|hub
    devices: list = field(default_factory=list)  # (device, current link, verifier state bytes)
    statuses: list = field(default_factory=list)  # (device, hub.status.DeviceStatus JSON)
    links: list = field(default_factory=list)  # (link, counter bytes)
    events: list = field(default_factory=list)  # {"t", "device", "link", "kind", "reason"}


@dataclass
class Stored:
    """What the verifier needs back after a restart."""

    devices: list  # (device, state bytes)
    links: list  # (link, counter bytes)
    unknown_device: int
    statuses: list = field(default_factory=list)  # (device, DeviceStatus JSON)


class Storage(Protocol):
    """What the hub needs of a storage backend (SQLiteStorage here; PostgreSQL could follow)."""

    def load(self) -> Stored: ...  # the verifier state saved by the last commits
    def commit(self, batch: Batch) -> None: ...  # all of it in one transaction, or nothing
    def counts_since(self, since_minute: int | None) -> list: ...  # (scope, name, counter, total)
    def device_links(self) -> dict: ...  # device -> current link
    def device_statuses(self) -> dict: ...  # device -> its latest status (hub.status fields)
    def events_since(self, since: float | None) -> list: ...
    def audit(self) -> tuple[int, str | None]: ...  # (events checked, first break or None)
    def close(self) -> None: ...


def event_hash(prev_hash: str, event: dict) -> str:
    """The chain link of one security event: SHA-256 over the previous hash and the event."""
    body = json.dumps([event["t"], event["device"], event["link"], event["kind"], event["reason"]],
                      separators=(",", ":"))
    return hashlib.sha256((prev_hash + "\n" + body).encode()).hexdigest()


class SQLiteStorage:
    def __init__(self, path, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise StorageError(f"{self.path}: no such hub database")
        if not self.path.exists():
            try:  # created owner-only before SQLite opens it
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except OSError as exc:
                raise StorageError(f"{self.path}: cannot create: {exc.strerror}") from None
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")  # an acknowledged message must survive power loss
            self.db.executescript(_SCHEMA)
            version = self.db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"{self.path}: not a usable SQLite database ({exc})") from None
        if version is None:
            self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif version[0] != str(SCHEMA_VERSION):
            raise StorageError(f"{self.path}: schema version {version[0]}, this hub reads {SCHEMA_VERSION}")
        last = self.db.execute("SELECT hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
        self._last_hash = last[0] if last else GENESIS_HASH

    # -- the ingest path --------------------------------------------------------------

    def load(self) -> Stored:
        devices = self.db.execute("SELECT device, state FROM devices").fetchall()
        links = self.db.execute("SELECT link, state FROM links").fetchall()
        unknown = self.db.execute("SELECT COALESCE(SUM(value), 0) FROM counts WHERE scope = 'hub' "
                                  "AND counter = 'unknown_device'").fetchone()[0]
        statuses = self.db.execute("SELECT device, status FROM device_status").fetchall()
        return Stored(devices, links, unknown, statuses)

    def commit(self, batch: Batch) -> None:
        db = self.db
        last_hash = self._last_hash
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT OR IGNORE INTO records VALUES (?, ?, ?, ?, ?, ?, ?)", batch.records)
            db.executemany("INSERT INTO counts VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE "
                           "SET value = value + excluded.value", batch.counts)
            db.executemany("INSERT OR REPLACE INTO devices VALUES (?, ?, ?)", batch.devices)
            db.executemany("INSERT OR REPLACE INTO links VALUES (?, ?)", batch.links)
            db.executemany("INSERT OR REPLACE INTO device_status VALUES (?, ?)", batch.statuses)
            for event in batch.events:
                new_hash = event_hash(last_hash, event)
                db.execute("INSERT INTO events (t, device, link, kind, reason, prev_hash, hash) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)", (event["t"], event["device"], event["link"],
                                                            event["kind"], event["reason"], last_hash, new_hash))
                last_hash = new_hash
            if batch.events:  # the chain's head, so that cutting rows off its end shows too
                db.execute("INSERT OR REPLACE INTO meta VALUES ('events_head', ?)", (last_hash,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._last_hash = last_hash

    def close(self) -> None:
        self.db.close()

    # -- reading ------------------------------------------------------------------------

    def counts_since(self, since_minute: int | None) -> list:
        """(scope, name, counter, total) summed over the minutes from since_minute."""
        return self.db.execute(
            "SELECT scope, name, counter, SUM(value) FROM counts WHERE minute >= ? GROUP BY scope, name, counter",
            (since_minute if since_minute is not None else -(2**62),)).fetchall()

    def device_statuses(self) -> dict:
        """device -> what its latest status message said (hub.status.DeviceStatus fields)."""
        return {device: json.loads(text)["fields"] for device, text in self.db.execute(
            "SELECT device, status FROM device_status")}

    def device_links(self) -> dict:
        return dict(self.db.execute("SELECT device, link FROM devices"))

    def events_since(self, since: float | None) -> list:
        rows = self.db.execute("SELECT t, device, link, kind, reason FROM events WHERE t >= ? ORDER BY id",
                               (since if since is not None else float("-inf"),))
        return [dict(zip(("t", "device", "link", "kind", "reason"), row)) for row in rows]

    def audit(self) -> tuple[int, str | None]:
        """(events checked, None) when the chain holds, else (events checked, what broke)."""
        prev = GENESIS_HASH
        checked = 0
        for row_id, t, device, link, kind, reason, prev_hash, stored_hash in self.db.execute(
                "SELECT id, t, device, link, kind, reason, prev_hash, hash FROM events ORDER BY id"):
            event = {"t": t, "device": device, "link": link, "kind": kind, "reason": reason}
            if prev_hash != prev:
                return checked, f"event {row_id}: does not follow the event before it (a row was removed or moved)"
            if event_hash(prev, event) != stored_hash:
                return checked, f"event {row_id}: its contents were changed after it was written"
            prev = stored_hash
            checked += 1
        head = self.db.execute("SELECT value FROM meta WHERE key = 'events_head'").fetchone()
        if (head[0] if head else GENESIS_HASH) != prev:
            return checked, f"the chain ends at event {checked}, not at the last event written (rows were cut off)"
        return checked, None
