"""Seals: tamper evidence over every table the reports are built from.

Each sealed table is cut into segments, and each segment has a digest that is the sum
(mod 2**128) of a hash of each of its rows: SHA-256 over the table name and the row, cut to
128 bits (plenty against accident; against someone who can write the file, see below). A sum
can be kept up to date by the transaction that writes the rows (add the new row's hash,
subtract the replaced or pruned row's), so every committed batch and every retention step
leaves digests that match the tables exactly; `hub audit` recomputes them from the rows.
A row changed, added or deleted by anything else (a mistake, damage SQLite did not notice,
an edit) leaves its segment's digest wrong, which locates it: a range of record ids, a UTC
day of counters, a slice of the devices.

Counter rows are hashed as value x hash(key), so the upserts that add to a counter (and the
roll-ups that merge minutes into hours and days) change digests without reading the row.
The security events have their own hash chain (storage.event_hash) and are not sealed here.

The sinks' cursors and the meta rows (the event chain's head and pruning anchor, retention
marks) are sealed too: moving a cursor would silently suppress delivery, rewriting the head or
the anchor would hide events cut from either end of the chain.

Keyed: the digests above are plain SHA-256 sums, which anyone who can write the file and
knows this format could recompute. So a store opened with a seal key (from the hub's key
file) also keeps KEYED_ROW: the sum over every sealed segment of HMAC-SHA256(seal key,
table | segment | digest), cut to 128 bits, updated with each digest in the same transaction.
Without the key nobody can make it agree with digests they recomputed, nor remove a segment
(its rows and its seal row) unnoticed. Someone who holds the key file can (docs/threat-model.md).
"""

import functools
import hashlib
import hmac
import time
import zlib

MODULUS = 2**128
RECORD_SEGMENT = 4096  # record ids per segment
DAY = 86400
NAME_SEGMENTS = 64  # devices and statuses are spread over this many segments by name

# A record's columns after its id (storage writes them in this order too).
RECORD_COLUMNS = "device, epoch, seq, link, device_time_ms, arrival, payload"
# table -> the columns hashed, in order (the first is what the segment is taken from).
COLUMNS = {
    "records": "id, " + RECORD_COLUMNS,
    "counts": "minute, scope, name, counter, value",
    "devices": "device, link, state",
    "links": "link, state",
    "device_status": "device, status",
    "sinks": "sink, delivered_upto",
    "meta": "key, value",
}
# Tables whose rows are replaced, by their key column.
KEYS = {"devices": "device", "links": "link", "device_status": "device", "sinks": "sink", "meta": "key"}
KEYED_ROW = "#keyed"  # the seals row holding the keyed sum (not a table)


# One encoding per table, fields joined by 0x1F: none of them can hold that byte raw (device
# ids and link names are restricted, status is JSON text, which escapes control characters);
# the trailing bytes field (payload, state) goes last, whole. SQLite gives back exactly the
# types written, so a row read back encodes as it did when written.
_ENCODE = {
    "records": lambda r: (b"records\x1f%d\x1f%s\x1f%d\x1f%d\x1f%s\x1f%r\x1f%r\x1f"
                          % (r[0], r[1].encode(), r[2], r[3], r[4].encode(), r[5], r[6]) + r[7]),
    "counts": lambda k: b"counts\x1f%d\x1f%s\x1f%s\x1f%s" % (k[0], k[1].encode(), k[2].encode(), k[3].encode()),
    "devices": lambda r: b"devices\x1f%s\x1f%s\x1f" % (r[0].encode(), r[1].encode()) + r[2],
    "links": lambda r: b"links\x1f%s\x1f" % r[0].encode() + r[1],
    "device_status": lambda r: b"device_status\x1f%s\x1f%s" % (r[0].encode(), r[1].encode()),
    "sinks": lambda r: b"sinks\x1f%s\x1f%d" % (r[0].encode(), r[1]),
    "meta": lambda r: b"meta\x1f%s\x1f%s" % (r[0].encode(), r[1].encode()),
}


def _hash(table: str, values: tuple) -> int:
    return int.from_bytes(hashlib.sha256(_ENCODE[table](values)).digest()[:16], "big")


@functools.lru_cache(maxsize=65536)  # a minute's counter keys recur in every batch of that minute
def _key_hash(key: tuple) -> int:
    return _hash("counts", key)


def row_hash(table: str, row: tuple) -> int:
    """What one row adds to its segment's digest (a counter row: value x hash of its key)."""
    if table == "counts":
        return row[4] * _key_hash(row[:4])
    return _hash(table, row)


def segment(table: str, row: tuple) -> int:
    if table == "records":
        return row[0] // RECORD_SEGMENT
    if table == "counts":
        return row[0] // DAY
    if table in ("links", "sinks", "meta"):
        return 0
    return zlib.crc32(row[0].encode()) % NAME_SEGMENTS


def describe(table: str, seg: int) -> str:
    """Where a segment's rows are, for the audit's message."""
    if table == "records":
        return f"records with ids {seg * RECORD_SEGMENT}-{(seg + 1) * RECORD_SEGMENT - 1}"
    if table == "counts":
        return f"counters of {time.strftime('%Y-%m-%d', time.gmtime(seg * DAY))} (UTC)"
    if table == "links":
        return "link counters"
    if table == "sinks":
        return "the sinks' delivery cursors"
    if table == "meta":
        return "the store's own marks (event chain head and anchor, retention progress)"
    return f"{table} rows in slice {seg} of {NAME_SEGMENTS} (by name)"


def keyed_term(key: bytes, table: str, seg: int, digest: int) -> int:
    """One segment's share of the keyed sum; a segment without rows (digest 0) adds nothing."""
    if not digest:
        return 0
    mac = hmac.digest(key, b"%s\x1f%d\x1f%032x" % (table.encode(), seg, digest), "sha256")
    return int.from_bytes(mac[:16], "big")


def key_id(key: bytes) -> str:
    """Names a seal key without revealing it: which key file sealed a store."""
    return hmac.digest(key, b"linkseal/v1 seal key id", "sha256")[:8].hex()


class SealDelta:
    """The digest changes one transaction makes; written by flush() inside that transaction.
    key: the store's seal key, when its seals are keyed (then flush keeps the keyed sum)."""

    def __init__(self, key: bytes | None = None):
        self.key = key
        self.changes = {}  # (table, segment) -> sum to add
        self.written = {}  # table -> {name: hash} of the rows replace() wrote: the storage keeps them after COMMIT

    def add(self, table: str, row: tuple, sign: int = 1) -> None:
        self._change(table, row, sign * row_hash(table, row))

    def add_records(self, first_id: int, records: list) -> None:
        """Records just inserted with ids first_id, first_id + 1, ...: the hot path of every
        commit, so the hashing loop is written out here rather than a call per row."""
        encode, sha256, changes = _ENCODE["records"], hashlib.sha256, self.changes
        sums = {}
        for number, record in enumerate(records):
            row_id = first_id + number
            digest = int.from_bytes(sha256(encode((row_id, *record))).digest()[:16], "big")
            segment_of = row_id // RECORD_SEGMENT
            sums[segment_of] = sums.get(segment_of, 0) + digest
        for segment_of, total in sums.items():
            where = ("records", segment_of)
            changes[where] = (changes.get(where, 0) + total) % MODULUS

    def replace(self, db, table: str, rows: list, known: dict) -> None:
        """Rows about to be written with INSERT OR REPLACE: take out the hashes of the rows they
        replace (known: name -> hash of the row this process last wrote; others are read in
        the same transaction), put in theirs."""
        unknown = [row[0] for row in rows if row[0] not in known]
        for start in range(0, len(unknown), 500):
            chunk = unknown[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for old in db.execute(f"SELECT {COLUMNS[table]} FROM {table} WHERE {KEYS[table]} IN ({marks})", chunk):
                self.add(table, old, -1)
        written = self.written.setdefault(table, {})
        for row in rows:
            written[row[0]] = new = _hash(table, row)
            self._change(table, row, new - known.get(row[0], 0))  # a row read above was taken out there

    def _change(self, table: str, row: tuple, amount: int) -> None:
        where = (table, segment(table, row))
        self.changes[where] = (self.changes.get(where, 0) + amount) % MODULUS

    def remove(self, db, table: str, where: str, params: tuple) -> None:
        """Rows about to be deleted (retention): take out their hashes."""
        for old in db.execute(f"SELECT {COLUMNS[table]} FROM {table} WHERE {where}", params):
            self.add(table, old, -1)

    def flush(self, db) -> None:
        keyed = 0
        for (table, seg), change in self.changes.items():
            if not change:
                continue
            row = db.execute("SELECT digest FROM seals WHERE tbl = ? AND segment = ?", (table, seg)).fetchone()
            old = int(row[0], 16) if row else 0
            digest = (old + change) % MODULUS
            db.execute("INSERT OR REPLACE INTO seals VALUES (?, ?, ?)", (table, seg, f"{digest:032x}"))
            if self.key is not None:
                keyed += keyed_term(self.key, table, seg, digest) - keyed_term(self.key, table, seg, old)
        if keyed:
            row = db.execute("SELECT digest FROM seals WHERE tbl = ? AND segment = 0", (KEYED_ROW,)).fetchone()
            total = ((int(row[0], 16) if row else 0) + keyed) % MODULUS
            db.execute("INSERT OR REPLACE INTO seals VALUES (?, 0, ?)", (KEYED_ROW, f"{total:032x}"))
        self.changes = {}


def recompute(db) -> dict:
    """(table, segment) -> digest, from the rows as they are now."""
    delta = SealDelta()
    for table, columns in COLUMNS.items():
        for row in db.execute(f"SELECT {columns} FROM {table}"):
            delta.add(table, row)
    return {where: digest for where, digest in delta.changes.items() if digest}


def stored(db) -> dict:
    return {(table, seg): int(digest, 16) for table, seg, digest in db.execute("SELECT tbl, segment, digest FROM seals")
            if int(digest, 16) and table != KEYED_ROW}


def keyed_sum(key: bytes, digests: dict) -> int:
    return sum(keyed_term(key, table, seg, digest) for (table, seg), digest in digests.items()) % MODULUS


def stored_keyed_sum(db) -> int | None:
    row = db.execute("SELECT digest FROM seals WHERE tbl = ? AND segment = 0", (KEYED_ROW,)).fetchone()
    return int(row[0], 16) if row else None


def write_keyed_sum(db, key: bytes) -> None:
    """Key a store's seals as they stand (a store first opened with a key)."""
    db.execute("INSERT OR REPLACE INTO seals VALUES (?, 0, ?)", (KEYED_ROW, f"{keyed_sum(key, stored(db)):032x}"))


def check(db, key: bytes | None = None) -> list[str]:
    """What does not match its seal, one line per segment; empty when everything does. With
    the key, also whether the seals themselves are the hub's (the keyed sum)."""
    want, got = stored(db), recompute(db)
    problems = [f"{describe(table, seg)}: rows were changed, added or removed outside the hub"
                for table, seg in sorted(set(want) | set(got)) if want.get((table, seg)) != got.get((table, seg))]
    if key is not None and stored_keyed_sum(db) != keyed_sum(key, want):
        problems.append("the seals themselves were rewritten or removed outside the hub (their keyed sum does not "
                        "match: someone recomputed them without the key file)")
    return problems
