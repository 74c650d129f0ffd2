"""Hub storage: the interface the ingest path needs, and its SQLite implementation.

One `commit(batch)` writes a batch's accepted records, its counter changes (per-minute
buckets per link and per device), its security events and the verifier state of every
device it touched, in one transaction: after a crash the stored state and the stored
records never disagree, so a frame accepted before is never accepted again.

The records table is also the outbox: its `id` is the commit order (never reused), and each
sink's cursor in `sinks` is the id of the last record that sink acknowledged (Outbox, used by
hub/service/delivery/forwarder.py). Pruning (prune_step) removes what the retention settings let go,
a small step at a time: delivered records, minute counters rolled up into hours and days
(totals unchanged), and old security events behind an anchor that keeps the chain checkable.

A PostgreSQL backend would implement the same methods; the verifier never sees SQL.
"""

import fcntl
import hashlib
import json
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from hub.core.status import statuses_of
from hub.service.storage import seals

SCHEMA_VERSION = 4  # 2: the outbox ids; 3: seals; 4: sinks and meta sealed too
GENESIS_HASH = "0" * 64
HOUR, DAY = 3600, 86400

_RECORDS = """CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL, link TEXT NOT NULL,
    device_time_ms INTEGER, arrival REAL NOT NULL, payload BLOB NOT NULL, UNIQUE (device, epoch, seq));"""
_RECORD_COLUMNS = seals.RECORD_COLUMNS
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
""" + _RECORDS + """
CREATE TABLE IF NOT EXISTS sinks (sink TEXT PRIMARY KEY, delivered_upto INTEGER NOT NULL);
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
CREATE TABLE IF NOT EXISTS seals (tbl TEXT NOT NULL, segment INTEGER NOT NULL, digest TEXT NOT NULL,
    PRIMARY KEY (tbl, segment)) WITHOUT ROWID;
"""


class StorageError(Exception):
    """The database cannot be opened or is not a linkseal hub database."""


class StorageFault(StorageError):
    """The database cannot be used now for a reason that passes (full, locked, read-only);
    `kind` is one of FAULT_KINDS. `hub run` waits it out; other commands report it."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


# SQLite result codes of faults that pass (space freed, a lock released, a mount made
# writable again): the hub pauses and retries. Anything else (a damaged file) stops it.
_PASSING_FAULTS = (("SQLITE_FULL", "storage_full"), ("SQLITE_BUSY", "storage_locked"),
                   ("SQLITE_LOCKED", "storage_locked"), ("SQLITE_READONLY", "storage_readonly"),
                   ("SQLITE_IOERR", "storage_io_error"), ("SQLITE_CANTOPEN", "storage_io_error"))


FAULT_KINDS = ("storage_full", "storage_locked", "storage_readonly", "storage_io_error")


def passing_fault(exc: BaseException) -> str | None:
    """storage_full, storage_locked, storage_readonly or storage_io_error when exc is a storage
    fault worth waiting out; None for anything else."""
    name = getattr(exc, "sqlite_errorname", None) if isinstance(exc, sqlite3.Error) else None
    for prefix, kind in _PASSING_FAULTS:
        if name and (name == prefix or name.startswith(prefix + "_")):
            return kind
    return None


def describe_fault(exc: BaseException, path: Path) -> str:
    """The real cause in one line: SQLite's code and message, and the file system's free space."""
    detail = f"{getattr(exc, 'sqlite_errorname', type(exc).__name__)}: {exc}"
    try:
        stat = os.statvfs(path.parent)
        detail += f"; {stat.f_bavail * stat.f_frsize} bytes free on its file system"
    except OSError:
        pass
    return detail


@dataclass(frozen=True)
class StoredRecord:
    """One row of the hub's records table (the outbox)."""

    id: int  # the outbox position: commit order, never reused
    device: str
    epoch: int
    seq: int
    link: str
    device_time_ms: int | None
    verified_at: float
    payload: bytes

    @property
    def key(self) -> str:
        return f"{self.device}/{self.epoch}/{self.seq}"


@dataclass(frozen=True)
class Retention:
    """How long things are kept, in seconds (hub.toml [retention]; docs/hub.md)."""

    records: float = 7 * DAY  # delivered records (0: as soon as every sink has them)
    minute_counts: float = 14 * DAY  # then rolled up into hours
    hourly_counts: float = 90 * DAY  # then rolled up into days
    device_counts: float = 400 * DAY  # per-device days older than this go (link and hub totals stay)
    events: float = 365 * DAY  # security events; an anchor keeps the chain checkable


@dataclass
class Batch:
    """Everything one commit writes."""

    records: list = field(default_factory=list)  # (device, epoch, seq, link, device_time_ms, arrival, payload)
    counts: list = field(default_factory=list)  # (minute, scope, name, counter, delta): scope device|link|hub
    devices: list = field(default_factory=list)  # (device, current link, verifier state bytes)
    statuses: list = field(default_factory=list)  # (device, hub.status.DeviceStatus JSON)
    links: list = field(default_factory=list)  # (link, counter bytes)
    events: list = field(default_factory=list)  # {"t", "device", "link", "kind", "reason"}
    unknown_device: int | None = None  # the verifier's total (a store that cannot sum its counts keeps it)
    intake_at: float | None = None  # arrival time of the newest message handled (rate-limit credit on restart)


@dataclass
class Stored:
    """What the verifier needs back after a restart."""

    devices: list  # (device, state bytes)
    links: list  # (link, counter bytes)
    unknown_device: int
    statuses: list = field(default_factory=list)  # (device, DeviceStatus JSON)
    intake_at: float | None = None  # Batch.intake_at of the last commit that had one


class Storage(Protocol):
    """What the hub needs of a storage backend (SQLiteStorage here; PostgreSQL could follow)."""

    def load(self) -> Stored: ...  # the verifier state saved by the last commits
    def commit(self, batch: Batch) -> None: ...  # all of it in one transaction, or nothing
    def counts_since(self, since_minute: int | None, scopes=...) -> list: ...  # (scope, name, counter, total)
    def device_links(self) -> dict: ...  # device -> current link
    def device_statuses(self, containing: str = "") -> tuple: ...  # (device -> status fields, device -> RadioState)
    def device_radio(self) -> dict: ...  # device -> RadioState of its LoRaWAN uplinks
    def events_since(self, since: float | None) -> list: ...
    def integrity_problem(self, full: bool = False) -> str | None: ...  # the database's own check
    def require_sound(self) -> None: ...  # StorageError for a damaged store
    def seal_problems(self) -> list[str]: ...  # rows that do not match their seals
    def audit(self) -> tuple[int, str | None]: ...  # (events checked, first break or None)
    def close(self) -> None: ...


def _connect(path):
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    # The forwarders write their cursors beside the ingest path, in milliseconds; a lock held
    # longer than this (another process) is a storage fault the hub waits out.
    db.execute("PRAGMA busy_timeout=3000")
    return db


def _rollback(db) -> None:
    # On some errors (SQLITE_FULL among them) SQLite has already rolled the transaction back;
    # a second ROLLBACK would raise "no transaction is active" and hide the real cause.
    if db.in_transaction:
        db.execute("ROLLBACK")


def _last_record_id(db) -> int:
    """The newest outbox id ever given (AUTOINCREMENT keeps it in sqlite_sequence, even after pruning)."""
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()
    return row[0] if row else 0


def event_filter(order_column: str, mark: str, after_id: int, kind, link, device) -> tuple[str, list]:
    """The WHERE clause and parameters of the console's event query (mark: the driver's
    placeholder): events after after_id in order_column, of this kind, link and device if given."""
    where, params = [f"{order_column} > {mark}"], [after_id]
    for column, value in (("kind", kind), ("link", link), ("device", device)):
        if value is not None:
            where.append(f"{column} = {mark}")
            params.append(value)
    return " AND ".join(where), params


def require_hub_store(db, path) -> None:
    """StorageError unless the file is a linkseal hub store: an empty file or another
    application's database is refused, never given our tables."""
    try:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        schema = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() if "meta" in tables else None
    except sqlite3.DatabaseError as exc:
        if passing_fault(exc):  # locked, full, read-only: the caller says so and waits
            raise
        db.close()
        raise StorageError(f"{path}: not a usable SQLite database ({exc})") from None
    if schema is None or "records" not in tables:
        db.close()
        raise StorageError(f"{path}: not a linkseal hub store (no hub tables in it): give the --db of a hub")


def event_hash(prev_hash: str, event: dict) -> str:
    """The chain link of one security event: SHA-256 over the previous hash and the event."""
    body = json.dumps([event["t"], event["device"], event["link"], event["kind"], event["reason"]],
                      separators=(",", ":"))
    return hashlib.sha256((prev_hash + "\n" + body).encode()).hexdigest()


class SQLiteReader:
    """The hub database read: what reports, audits and the console need. SQLiteStorage is one;
    the console reads through its own read-only connection (read_only) while the hub writes."""

    def __init__(self, db):
        self.db = db

    @classmethod
    def read_only(cls, path, copy: bool = False) -> "SQLiteReader":
        """A reader on its own connection that cannot write (for a thread of its own). copy: a
        file nothing writes any more (an audit of a copy, perhaps on read-only media: SQLite
        then needs no -shm file beside it). StorageError for a file that is not a hub store."""
        path = Path(path)
        if not path.is_file():
            raise StorageError(f"{path}: no such hub database")
        # A copy on read-only media (or in a directory we may not write) has no -shm beside it
        # and cannot get one: read it as immutable.
        copy = copy or not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK)
        mode = "ro&immutable=1" if copy else "ro"
        db = sqlite3.connect(f"file:{path.resolve()}?mode={mode}", uri=True, check_same_thread=False)
        db.execute("PRAGMA busy_timeout = 3000")
        require_hub_store(db, path)
        return cls(db)

    def close(self) -> None:
        self.db.close()

    def counts_since(self, since_minute: int | None, scopes=("device", "link", "hub")) -> list:
        """(scope, name, counter, total) summed over the minutes from since_minute."""
        marks = ", ".join("?" * len(scopes))
        return self.db.execute(
            f"SELECT scope, name, counter, SUM(value) FROM counts WHERE minute >= ? AND scope IN ({marks}) "
            "GROUP BY scope, name, counter", (since_minute if since_minute is not None else -(2**62), *scopes)).fetchall()

    def device_statuses(self, containing: str = "") -> tuple:
        """(device -> what its latest status message said (hub.status.DeviceStatus fields),
        device -> its RadioState (hub/core/radio.py), for LoRaWAN devices); containing: only the
        statuses whose stored text holds it (a JSON key or value), so few are parsed."""
        return statuses_of(self.db.execute("SELECT device, status FROM device_status WHERE instr(status, ?) > 0",
                                           (containing,)))

    def device_radio(self) -> dict:
        """device -> its RadioState, reading only the LoRaWAN devices' statuses."""
        return self.device_statuses('"radio"')[1]

    def device_links(self) -> dict:
        return dict(self.db.execute("SELECT device, link FROM devices"))

    def events_since(self, since: float | None) -> list:
        rows = self.db.execute("SELECT t, device, link, kind, reason FROM events WHERE t >= ? ORDER BY id",
                               (since if since is not None else float("-inf"),))
        return [dict(zip(("t", "device", "link", "kind", "reason"), row)) for row in rows]

    def events_after(self, after_id: int, limit: int, kind=None, link=None, device=None) -> list:
        """Security events with an id above after_id, oldest first, filtered (the console)."""
        where, params = event_filter("id", "?", after_id, kind, link, device)
        rows = self.db.execute(f"SELECT id, t, device, link, kind, reason FROM events WHERE {where} "
                               "ORDER BY id LIMIT ?", (*params, limit))
        return [dict(zip(("id", "t", "device", "link", "kind", "reason"), row)) for row in rows]

    def device_counts(self, names: list) -> list:
        """(device, counter, total) over all stored minutes, for these devices."""
        rows = []
        for start in range(0, len(names), 500):  # within SQLite's limit on bound parameters
            chunk = names[start : start + 500]
            rows += self.db.execute(f"SELECT name, counter, SUM(value) FROM counts WHERE scope = 'device' AND name IN "
                                    f"({', '.join('?' * len(chunk))}) GROUP BY name, counter", chunk).fetchall()
        return rows

    def latest_minute(self) -> int | None:
        """The newest minute any counter was stored for (None: an empty store)."""
        return self.db.execute("SELECT MAX(minute) FROM counts").fetchone()[0]

    def counts_by_minute(self, scope: str, name: str, since_minute: int, counters) -> list:
        """(minute, counter, value) rows of one link or device from since_minute (the console's charts)."""
        marks = ", ".join("?" * len(counters))
        return self.db.execute(f"SELECT minute, counter, value FROM counts WHERE scope = ? AND name = ? AND minute >= ? "
                               f"AND counter IN ({marks}) ORDER BY minute", (scope, name, since_minute, *counters)
                               ).fetchall()

    def events_anchor(self) -> tuple[int, str]:
        """(id, hash) of the last pruned security event; (0, genesis) when none was pruned."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'events_anchor'").fetchone()
        if row is None:
            return 0, GENESIS_HASH
        parts = row[0].split()
        if len(parts) != 2 or not parts[0].isdecimal() or len(parts[1]) != 64:
            raise ValueError("the pruning anchor in meta is not one the hub writes (it was edited)")
        return int(parts[0]), parts[1]

    def integrity_problem(self, full: bool = False) -> str | None:
        """SQLite's own check of the file (quick: the structure; full: every index too);
        None when sound, else its first complaint."""
        try:
            rows = self.db.execute("PRAGMA integrity_check(1)" if full else "PRAGMA quick_check(1)").fetchall()
        except sqlite3.DatabaseError as exc:
            return str(exc)
        return None if rows == [("ok",)] else str(rows[0][0])

    def seal_problems(self, key: bytes | None = None) -> list[str]:
        """Rows that do not match their seals (hub/service/storage/seals.py); with the seal key, also
        seals recomputed by someone without it. Empty when all is well."""
        problems = seals.check(self.db, key)
        if key is not None and self.seal_key_id() not in (None, seals.key_id(key)):
            problems.insert(0, "this store was sealed under another key file: give the hub's own --keys")
        return problems

    def seal_key_id(self) -> str | None:
        """Which key sealed the store (seals.key_id), or None when its seals are not keyed."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'seal_key_id'").fetchone()
        return row[0] if row else None

    def pruned_records_upto(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'records_pruned_upto'").fetchone()
        return int(row[0]) if row else 0

    def audit(self) -> tuple[int, str | None]:
        """(events checked, None) when the chain holds, else (events checked, what broke).
        The chain is checked from the anchor left by pruning (events_anchor), or from its start."""
        try:
            anchor_id, prev = self.events_anchor()
        except ValueError as exc:
            return 0, str(exc)
        expected_id = anchor_id + 1
        checked = 0
        for row_id, t, device, link, kind, reason, prev_hash, stored_hash in self.db.execute(
                "SELECT id, t, device, link, kind, reason, prev_hash, hash FROM events ORDER BY id"):
            event = {"t": t, "device": device, "link": link, "kind": kind, "reason": reason}
            if prev_hash != prev or (checked == 0 and row_id != expected_id):
                return checked, f"event {row_id}: does not follow the event before it (a row was removed or moved)"
            if event_hash(prev, event) != stored_hash:
                return checked, f"event {row_id}: its contents were changed after it was written"
            prev = stored_hash
            checked += 1
        head = self.db.execute("SELECT value FROM meta WHERE key = 'events_head'").fetchone()
        if (head[0] if head else GENESIS_HASH) != prev:
            return checked, f"the chain ends at event {checked}, not at the last event written (rows were cut off)"
        return checked, None


class SQLiteStorage(SQLiteReader):
    def __init__(self, path, create: bool = True, seal_key: bytes | None = None):
        """seal_key: keys the store's seals (KeyFile.seal_key); a store sealed with a key can
        only be written with it."""
        self.path = Path(path)
        self.seal_key = seal_key
        self._keyed_elsewhere = False  # keyed with a key we were not given: read only (_key_seals)
        if not create and not self.path.is_file():
            raise StorageError(f"{self.path}: no such hub database")
        if not self.path.exists():
            try:  # created owner-only before SQLite opens it
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except OSError as exc:
                raise StorageError(f"{self.path}: cannot create: {exc.strerror}") from None
        try:
            self.db = _connect(self.path)
            if self.path.stat().st_size or not create:  # a file that exists must be ours before we write to it
                require_hub_store(self.db, self.path)
            # Freed pages are reused, and `hub prune` can hand them back (set before any table exists).
            self.db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")  # an acknowledged message must survive power loss
            self.db.executescript(_SCHEMA)
            version = self.db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if version is not None and version[0] == "1":
                self._migrate_from_1()
                version = ("2",)
            if version is not None and version[0] == "2":
                self._seal_existing()
                version = (str(SCHEMA_VERSION),)
            if version is not None and version[0] == "3":
                self._seal_existing(tables=("sinks", "meta"))
                version = (str(SCHEMA_VERSION),)
            if version is None:
                self._write(lambda delta: self._set_meta(delta, "schema", str(SCHEMA_VERSION)))
                version = (str(SCHEMA_VERSION),)
        except sqlite3.DatabaseError as exc:
            if hasattr(self, "db"):  # `hub run` opens again while it waits: no connection left behind each time
                self.db.close()
            kind = passing_fault(exc)
            if kind == "storage_locked":
                raise StorageFault(f"{self.path}: locked by another process ({exc}); the database is not damaged: "
                                   "try again when that process has finished", kind) from None
            if kind:  # full, read-only, I/O error: say so, not "damaged"
                raise StorageFault(f"{self.path}: cannot write ({describe_fault(exc, self.path)})", kind) from None
            raise StorageError(f"{self.path}: not a usable SQLite database ({exc})") from None
        if version[0] != str(SCHEMA_VERSION):
            raise StorageError(f"{self.path}: schema version {version[0]}, this hub reads {SCHEMA_VERSION}")
        self._key_seals()
        last = self.db.execute("SELECT hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
        self._last_hash = last[0] if last else GENESIS_HASH
        # table -> {name: seal hash} of rows this process wrote: replacing them needs no read.
        self._row_hashes = {}

    def _migrate_from_1(self):
        """Schema 1 had no outbox ids: number the records in arrival order, no sink has them yet."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        db.execute("ALTER TABLE records RENAME TO records_v1")
        db.execute(_RECORDS)
        db.execute(f"INSERT INTO records ({_RECORD_COLUMNS}) SELECT {_RECORD_COLUMNS} FROM records_v1 "
                   "ORDER BY arrival, device, epoch, seq")
        db.execute("DROP TABLE records_v1")
        db.execute("UPDATE meta SET value = '2' WHERE key = 'schema'")
        db.execute("COMMIT")

    def _seal_existing(self, tables=tuple(seals.COLUMNS)):
        """Seal tables as they are (one pass, once): schema 2 had no seals, schema 3 none over
        the sinks and meta tables."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION),))
        delta = seals.SealDelta()
        for table in tables:
            db.execute("DELETE FROM seals WHERE tbl = ?", (table,))
            for row in db.execute(f"SELECT {seals.COLUMNS[table]} FROM {table}"):
                delta.add(table, row)
        delta.flush(db)
        db.execute("COMMIT")

    def _key_seals(self) -> None:
        """A store first opened with a seal key is keyed from now on; one keyed by another key
        file, or opened without its key, is never written (its keyed sum would go stale)."""
        stored_id = self.seal_key_id()
        if self.seal_key is None:
            self._keyed_elsewhere = stored_id is not None
            return
        self._keyed_elsewhere = False
        if stored_id is None:
            def key(delta):
                self._set_meta(delta, "seal_key_id", seals.key_id(self.seal_key))
                delta.flush(self.db)
                seals.write_keyed_sum(self.db, self.seal_key)
            self._write(key, keyed=False)
        elif stored_id != seals.key_id(self.seal_key):
            raise StorageError(f"{self.path}: sealed under another key file (seal key {stored_id}); give the "
                               "hub's own --keys")

    def _delta(self, keyed: bool = True) -> seals.SealDelta:
        if self._keyed_elsewhere:
            raise StorageError(f"{self.path}: its seals are keyed: open it with the hub's key file (--keys) to write")
        return seals.SealDelta(self.seal_key if keyed else None)

    def _write(self, change, keyed: bool = True) -> None:
        """change(delta) in one transaction, the seals flushed with it."""
        db = self.db
        delta = self._delta(keyed)
        db.execute("BEGIN IMMEDIATE")
        try:
            change(delta)
            delta.flush(db)
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise

    def _set_meta(self, delta, key: str, value: str) -> None:
        """A meta row, sealed like every other: its old value's hash out, the new one's in."""
        delta.replace(self.db, "meta", [(key, value)], {})
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # -- the ingest path --------------------------------------------------------------

    def load(self) -> Stored:
        devices = self.db.execute("SELECT device, state FROM devices").fetchall()
        links = self.db.execute("SELECT link, state FROM links").fetchall()
        unknown = self.db.execute("SELECT COALESCE(SUM(value), 0) FROM counts WHERE scope = 'hub' "
                                  "AND counter = 'unknown_device'").fetchone()[0]
        statuses = self.db.execute("SELECT device, status FROM device_status").fetchall()
        intake = self.db.execute("SELECT value FROM meta WHERE key = 'intake_at'").fetchone()
        return Stored(devices, links, unknown, statuses, float(intake[0]) if intake else None)

    def commit(self, batch: Batch) -> None:
        db = self.db
        last_hash = self._last_hash
        delta = self._delta()
        db.execute("BEGIN IMMEDIATE")
        try:
            if batch.records:
                self._insert_records(batch.records, delta)
            db.executemany("INSERT INTO counts VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE "
                           "SET value = value + excluded.value", batch.counts)
            for row in batch.counts:
                delta.add("counts", row)
            for table, rows in (("devices", batch.devices), ("links", batch.links),
                                ("device_status", batch.statuses)):
                if rows:
                    delta.replace(db, table, rows, self._row_hashes.setdefault(table, {}))
                    db.executemany(f"INSERT OR REPLACE INTO {table} VALUES ({', '.join('?' * len(rows[0]))})", rows)
            for event in batch.events:
                new_hash = event_hash(last_hash, event)
                db.execute("INSERT INTO events (t, device, link, kind, reason, prev_hash, hash) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)", (event["t"], event["device"], event["link"],
                                                            event["kind"], event["reason"], last_hash, new_hash))
                last_hash = new_hash
            if batch.intake_at is not None:
                self._set_meta(delta, "intake_at", repr(batch.intake_at))
            if batch.events:  # the chain's head (sealed), so that cutting rows off its end shows too
                self._set_meta(delta, "events_head", last_hash)
            delta.flush(db)
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        self._last_hash = last_hash
        for table, hashes in delta.written.items():  # only once committed
            if table in self._row_hashes:  # (meta rows are read again each time: no cache for them)
                self._row_hashes[table].update(hashes)

    def _insert_records(self, records, delta) -> None:
        db = self.db
        first = _last_record_id(db) + 1
        db.executemany(f"INSERT OR IGNORE INTO records ({_RECORD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", records)
        if _last_record_id(db) - first + 1 == len(records):  # all inserted, with consecutive ids
            delta.add_records(first, records)
        else:  # some were already there (never expected): seal what was inserted, as stored
            for row in db.execute(f"SELECT {seals.COLUMNS['records']} FROM records WHERE id >= ?", (first,)):
                delta.add("records", row)

    # -- the outbox and retention ---------------------------------------------------------

    def last_record_id(self) -> int:
        return _last_record_id(self.db)

    def set_sinks(self, names) -> list:
        """Keep a cursor for exactly these sinks: a new sink starts with every retained record, a
        sink no longer configured is forgotten (it no longer holds records back). Returns those forgotten."""
        db = self.db
        forgotten = []

        def change(delta):
            known = {name for (name,) in db.execute("SELECT sink FROM sinks")}
            forgotten.extend(name for name in known if name not in names)
            for name in forgotten:
                delta.remove(db, "sinks", "sink = ?", (name,))
                db.execute("DELETE FROM sinks WHERE sink = ?", (name,))
            # Just before the oldest retained record, so a backlog is newest id - cursor, exactly.
            start = db.execute("SELECT MIN(id) - 1 FROM records").fetchone()[0]
            start = start if start is not None else self.last_record_id()
            for name in names:
                if name not in known:
                    delta.add("sinks", (name, start))
                    db.execute("INSERT INTO sinks VALUES (?, ?)", (name, start))

        self._write(change)
        return forgotten

    def prune_step(self, now: float, retention: Retention, limit: int = 2000) -> dict:
        """One small step of retention: at most `limit` rows of each kind, one transaction.
        Returns what it removed; all zeros when there is nothing (more) to do."""
        db = self.db
        done = {"records": 0, "counts_rolled": 0, "device_counts": 0, "events": 0}
        delta = self._delta()  # pruning keeps the seals right: audit tells it from a deletion
        db.execute("BEGIN IMMEDIATE")
        try:
            done["records"] = self._prune_records(now - retention.records, limit, delta)
            done["counts_rolled"] = (self._roll_up(now - retention.minute_counts, HOUR, "rolled_hours_upto", delta) +
                                     self._roll_up(now - retention.hourly_counts, DAY, "rolled_days_upto", delta))
            done["device_counts"] = self._expire_device_counts(now - retention.device_counts, delta)
            done["events"] = self._prune_events(now - retention.events, limit, delta)
            delta.flush(db)
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        return done

    def _prune_records(self, cutoff: float, limit: int, delta) -> int:
        # Oldest first by id (commit order), stopping at the first one still within retention or
        # not yet acknowledged by every sink: a walk from the start, never a scan of the table.
        delivered = self.db.execute("SELECT MIN(delivered_upto) FROM sinks").fetchone()[0]
        rows = self.db.execute("SELECT id, arrival FROM records WHERE id <= ? ORDER BY id LIMIT ?",
                               (delivered if delivered is not None else 2**62, limit)).fetchall()
        last = None
        for record_id, arrival in rows:
            if arrival >= cutoff:
                break
            last = record_id
        if last is None:
            return 0
        delta.remove(self.db, "records", "id <= ?", (last,))
        self._set_meta(delta, "records_pruned_upto", str(last))
        return self.db.execute("DELETE FROM records WHERE id <= ?", (last,)).rowcount

    def _roll_up(self, cutoff: float, size: int, mark: str, delta) -> int:
        """Merge the counter rows of one bucket of `size` seconds older than cutoff into the
        bucket's first row (sums kept exact); returns the rows merged away."""
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (mark,)).fetchone()
        done_upto = int(row[0]) if row else -(2**62)
        first = self.db.execute("SELECT MIN(minute) FROM counts WHERE minute >= ? AND minute < ? AND minute % ? != 0",
                                (done_upto, cutoff, size)).fetchone()[0]
        if first is None:
            return 0
        start = first - first % size
        end = start + size
        if end > cutoff:  # the bucket is not wholly past the cutoff yet
            return 0
        for old in self.db.execute(f"SELECT {seals.COLUMNS['counts']} FROM counts WHERE minute > ? AND minute < ?",
                                   (start, end)):
            delta.add("counts", old, -1)  # merged into the bucket's first row: same sums, another key
            delta.add("counts", (start, *old[1:]))
        self.db.execute("INSERT INTO counts SELECT ?, scope, name, counter, SUM(value) FROM counts "
                        "WHERE minute > ? AND minute < ? GROUP BY scope, name, counter "
                        "ON CONFLICT DO UPDATE SET value = value + excluded.value", (start, start, end))
        merged = self.db.execute("DELETE FROM counts WHERE minute > ? AND minute < ?", (start, end)).rowcount
        self._set_meta(delta, mark, str(end))
        return merged

    def _expire_device_counts(self, cutoff: float, delta) -> int:
        """Delete the oldest bucket of per-device counters older than cutoff: the one part of the
        counter history that grows with the fleet. Link and hub rows stay (a few per day), so
        link totals and the restored unknown-device count never go backwards."""
        oldest = self.db.execute("SELECT MIN(minute) FROM counts WHERE minute < ? AND scope = 'device'",
                                 (cutoff,)).fetchone()[0]
        if oldest is None:
            return 0
        delta.remove(self.db, "counts", "minute = ? AND scope = 'device'", (oldest,))
        return self.db.execute("DELETE FROM counts WHERE minute = ? AND scope = 'device'", (oldest,)).rowcount

    def _prune_events(self, cutoff: float, limit: int, delta) -> int:
        rows = self.db.execute("SELECT id, t, hash FROM events ORDER BY id LIMIT ?", (limit,)).fetchall()
        last = None
        for row_id, t, stored_hash in rows:
            if t >= cutoff:
                break
            last = (row_id, stored_hash)
        if last is None:
            return 0
        removed = self.db.execute("DELETE FROM events WHERE id <= ?", (last[0],)).rowcount
        # The anchor: the last pruned event's position and hash, where the audit now starts.
        self._set_meta(delta, "events_anchor", f"{last[0]} {last[1]}")
        return removed

    def release_space(self) -> int:
        """Hand freed pages back to the file system (for a stopped hub); returns bytes released."""
        before = self.path.stat().st_size
        # Run as a script: through execute() the pragma takes one step, and frees one page.
        self.db.executescript("PRAGMA incremental_vacuum;")
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return max(0, before - self.path.stat().st_size)

    def require_sound(self) -> None:
        """StorageError (exit 2) for a damaged file: `hub run` and `hub report` refuse it."""
        problem = self.integrity_problem()
        if problem:
            raise StorageError(f"{self.path}: the database is damaged (SQLite: {problem}); restore it from a backup "
                               f"(`linkseal hub audit --db {self.path}` shows what else is wrong)")



class WriterLock:
    """One writer per database: `hub run` and `hub prune` hold an exclusive lock on the database
    file itself and on DB.lock beside its real path (flock: released by the kernel when the
    process dies, kill -9 included). The lock follows the file, not the name: a symlink or a
    hard link to a running hub's database is the same file, and a second writer is refused with
    the holder's pid instead of verifying the same stream twice (doubled counters, forgotten
    sink cursors, and a hash chain that then looks tampered with).

    flock, not fcntl: SQLite's own locks are fcntl locks, which flock never touches on Linux;
    the handle stays open until release(), called once the database is closed."""

    def __init__(self, db_path):
        real = Path(os.path.realpath(db_path))
        self.path = Path(str(real) + ".lock")
        try:
            # A missing database is created here, empty (SQLite takes it as new), private as the store is.
            self.db_file = os.fdopen(os.open(real, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
            self.file = open(self.path, "a+")
        except OSError as exc:
            raise StorageError(f"{db_path}: cannot open it or its lock file {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(self.db_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "unknown (through another name: a link to this file)"
            self.release()
            raise StorageError(f"{db_path}: another hub (pid {holder}) is writing this database; "
                               "stop it first, or give this one a --db of its own") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()

    def release(self) -> None:
        self.file.close()
        self.db_file.close()


class Outbox:
    """The delivery side's view of the records table: one per forwarder thread (its own
    connection), plus one for metrics. Reads undelivered records, moves a sink's cursor."""

    def __init__(self, path, seal_key: bytes | None = None):
        self.seal_key = seal_key
        try:
            self.db = _connect(path)
            # A cursor update lost to a power cut only means records delivered again: no fsync for it.
            self.db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"{path}: not a usable SQLite database ({exc})") from None

    def cursor(self, sink: str) -> int:
        row = self.db.execute("SELECT delivered_upto FROM sinks WHERE sink = ?", (sink,)).fetchone()
        return row[0] if row else 0

    def undelivered(self, after_id: int, limit: int) -> list:
        rows = self.db.execute(f"SELECT id, {_RECORD_COLUMNS} FROM records WHERE id > ? ORDER BY id LIMIT ?",
                               (after_id, limit))
        return [StoredRecord(*row) for row in rows]

    def mark_delivered(self, sink: str, upto: int) -> None:
        """Move the cursor, and its seal with it (a cursor moved by anything else shows in the audit)."""
        db = self.db
        delta = seals.SealDelta(self.seal_key)
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT delivered_upto FROM sinks WHERE sink = ?", (sink,)).fetchone()
            if row is not None and row[0] < upto:
                delta.replace(db, "sinks", [(sink, upto)], {})
                db.execute("UPDATE sinks SET delivered_upto = ? WHERE sink = ?", (upto, sink))
                delta.flush(db)
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise

    def backlog(self, after_id: int) -> tuple[int, float | None]:
        """(records after the cursor, arrival of the oldest of them or None)."""
        count, oldest = self.db.execute("SELECT COUNT(*), MIN(arrival) FROM (SELECT arrival FROM records "
                                        "WHERE id > ? ORDER BY id LIMIT 1)", (after_id,)).fetchone()
        if not count:
            return 0, None
        return _last_record_id(self.db) - after_id, oldest

    def close(self) -> None:
        self.db.close()
