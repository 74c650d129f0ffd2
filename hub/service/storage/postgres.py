"""The hub's store in PostgreSQL, for hub workers on a RabbitMQ cluster (docs/scale-out.md).

Each worker owns some partitions (the quorum queues it is the single active consumer of) and
keeps one PartitionStorage per owned partition: the Storage of hub/service/storage/sqlite.py over
the rows of that partition's devices. A commit writes a batch's records (linkseal_records,
the table the gateway's PostgreSQL sink writes too), counter deltas, device state, statuses,
link counters and security events in one transaction, and only then are the batch's
deliveries acknowledged.

Fencing: taking a partition (claim) increments its token in linkseal_partitions; every
commit first locks that row and compares the token, so a worker that lost its queue (a
network partition, a long pause) and comes back cannot commit over the new owner: its
commit fails with Fenced and it drops the partition. The row lock also orders a claim after
a commit already under way, so the new owner loads the state that commit wrote.

Reports and audits read all partitions (PostgresReader): counters are additive deltas, so
workers add to the same rows; each partition keeps its own chain of security events.
"""

from hub.core.status import statuses_of
from hub.service.delivery.sinks import PG_SCHEMA, PG_TABLE
from hub.service.storage.sqlite import GENESIS_HASH, Batch, StorageError, Stored, event_filter, event_hash

SCHEMA = [PG_SCHEMA, """
CREATE TABLE IF NOT EXISTS linkseal_partitions (
    partition integer PRIMARY KEY, token bigint NOT NULL, owner text NOT NULL, since timestamptz NOT NULL,
    unknown_device bigint NOT NULL DEFAULT 0, intake_at double precision)""", """
CREATE TABLE IF NOT EXISTS linkseal_devices (
    device text PRIMARY KEY, partition integer NOT NULL, link text NOT NULL, state bytea NOT NULL)""", """
CREATE INDEX IF NOT EXISTS linkseal_devices_partition ON linkseal_devices (partition)""", """
CREATE TABLE IF NOT EXISTS linkseal_statuses (device text PRIMARY KEY, status text NOT NULL)""", """
CREATE TABLE IF NOT EXISTS linkseal_links (
    partition integer NOT NULL, link text NOT NULL, state bytea NOT NULL, PRIMARY KEY (partition, link))""", """
CREATE TABLE IF NOT EXISTS linkseal_counts (
    minute bigint NOT NULL, scope text NOT NULL, name text NOT NULL, counter text NOT NULL, value bigint NOT NULL,
    PRIMARY KEY (minute, scope, name, counter))""", """
CREATE TABLE IF NOT EXISTS linkseal_workers (owner text PRIMARY KEY, seen timestamptz NOT NULL)""", """
CREATE TABLE IF NOT EXISTS linkseal_normals (
    device text PRIMARY KEY, link text NOT NULL, records double precision NOT NULL,
    bytes_mean double precision NOT NULL, bytes_max double precision NOT NULL, births double precision NOT NULL,
    shared_at double precision NOT NULL)""", """
CREATE TABLE IF NOT EXISTS linkseal_events (
    partition integer NOT NULL, id bigint NOT NULL, t double precision NOT NULL, device text, link text,
    kind text NOT NULL, reason text NOT NULL, prev_hash text NOT NULL, hash text NOT NULL,
    PRIMARY KEY (partition, id))""", """
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
                   AND table_name = 'linkseal_events' AND column_name = 'seq') THEN
        ALTER TABLE linkseal_events ADD COLUMN seq bigserial;
    END IF;
END $$""", """
CREATE INDEX IF NOT EXISTS linkseal_events_seq ON linkseal_events (seq)""",
          # Only when missing: ALTER TABLE locks the table even when there is nothing to add, and
          # every worker's connection runs this list while others commit (a deadlock otherwise).
          """
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
                   AND table_name = 'linkseal_partitions' AND column_name = 'intake_at') THEN
        ALTER TABLE linkseal_partitions ADD COLUMN intake_at double precision;
    END IF;
END $$"""]


class Fenced(Exception):
    """Another worker took the partition: this one must not commit for it any more."""


def _connect(url: str):
    import psycopg

    try:
        conn = psycopg.connect(url, connect_timeout=10)
    except psycopg.Error as exc:
        raise StorageError(f"PostgreSQL {_redacted(url)}: {str(exc).strip().splitlines()[0]}") from None
    try:
        with conn.transaction():
            for statement in SCHEMA:
                conn.execute(statement)
    except psycopg.Error as exc:
        conn.close()
        raise StorageError(f"PostgreSQL {_redacted(url)}: cannot set up the hub's tables "
                           f"({str(exc).strip().splitlines()[0]}): the workers' role must own linkseal_* tables, "
                           "or create them with it first") from None
    return conn


def ensure_schema(url: str) -> None:
    """Create the tables if they are missing (workers do it too; readers can start first)."""
    _connect(url).close()


def _redacted(url: str) -> str:
    """The URL without a password, for messages."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def claim(url: str, partition: int, owner: str) -> int:
    """Take a partition: its new fencing token (every earlier owner's commits now fail)."""
    conn = _connect(url)
    try:
        with conn.transaction():
            row = conn.execute(
                "INSERT INTO linkseal_partitions (partition, token, owner, since) VALUES (%s, 1, %s, now()) "
                "ON CONFLICT (partition) DO UPDATE SET token = linkseal_partitions.token + 1, owner = EXCLUDED.owner, "
                "since = now() RETURNING token", (partition, owner)).fetchone()
        return row[0]
    finally:
        conn.close()


class WorkerRegistry:
    """Which workers are alive: each says so every few seconds, so each can take its fair share."""

    def __init__(self, url: str, owner: str):
        self.owner = owner
        self.conn = _connect(url)
        self.conn.autocommit = True

    def beat(self, alive_within: float) -> int:
        """Say this worker is alive; returns how many workers are."""
        self.conn.execute("INSERT INTO linkseal_workers VALUES (%s, now()) ON CONFLICT (owner) DO UPDATE "
                          "SET seen = now()", (self.owner,))
        return self.conn.execute("SELECT COUNT(*) FROM linkseal_workers WHERE seen > now() - %s * interval '1 second'",
                                 (alive_within,)).fetchone()[0]

    def leave(self) -> None:
        self.conn.execute("DELETE FROM linkseal_workers WHERE owner = %s", (self.owner,))

    def close(self) -> None:
        self.conn.close()


class FleetNormals:
    """The fleet's normals across every worker (docs/behaviour.md): each worker shares its
    devices' learned normals; the percentiles of a link type are taken over all of them, so
    a fleet rule judges a device against its whole link type, not its partition's share."""

    COLUMNS = ("records", "bytes_mean", "bytes_max", "births")  # hub.core.behaviour.LEARNED

    def __init__(self, url: str):
        self.conn = _connect(url)
        self.conn.autocommit = True

    def share(self, normals, now: float) -> None:
        """normals: (device, link, [records, bytes_mean, bytes_max, births]) of learned devices."""
        rows = [(device, link, *values, now) for device, link, values in normals]
        if rows:
            with self.conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO linkseal_normals VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (device) DO UPDATE "
                    "SET link = EXCLUDED.link, records = EXCLUDED.records, bytes_mean = EXCLUDED.bytes_mean, "
                    "bytes_max = EXCLUDED.bytes_max, births = EXCLUDED.births, shared_at = EXCLUDED.shared_at", rows)

    def percentiles(self, wanted, fresh_since: float, at_least: int) -> dict:
        """(link, metric, p) -> the p-th percentile of the normals shared since fresh_since, for
        each (metric, p) wanted and each link type with at least `at_least` devices."""
        found = {}
        for metric, p in sorted(wanted):
            if metric not in self.COLUMNS:
                continue
            rows = self.conn.execute(  # the column name comes from COLUMNS above, never from input
                f"SELECT link, percentile_cont(%s) WITHIN GROUP (ORDER BY {metric}) FROM linkseal_normals "
                "WHERE shared_at >= %s GROUP BY link HAVING COUNT(*) >= %s", (p / 100.0, fresh_since, at_least))
            for link, value in rows:
                found[(link, metric, p)] = value
        return found

    def close(self) -> None:
        self.conn.close()


class PartitionStorage:
    """The Storage (hub/service/storage/sqlite.py) of one partition, for the worker holding `token`."""

    def __init__(self, url: str, partition: int, token: int):
        self.url, self.partition, self.token = url, partition, token
        self.conn = _connect(url)
        last = self.conn.execute("SELECT id, hash FROM linkseal_events WHERE partition = %s ORDER BY id DESC LIMIT 1",
                                 (partition,)).fetchone()
        self._last_id, self._last_hash = (last[0], last[1]) if last else (0, GENESIS_HASH)
        self.conn.commit()

    def load(self) -> Stored:
        conn, p = self.conn, self.partition
        with conn.transaction():
            devices = conn.execute("SELECT device, state FROM linkseal_devices WHERE partition = %s", (p,)).fetchall()
            links = conn.execute("SELECT link, state FROM linkseal_links WHERE partition = %s", (p,)).fetchall()
            statuses = conn.execute("SELECT s.device, s.status FROM linkseal_statuses s JOIN linkseal_devices d "
                                    "ON d.device = s.device WHERE d.partition = %s", (p,)).fetchall()
            row = conn.execute("SELECT unknown_device, intake_at FROM linkseal_partitions WHERE partition = %s",
                               (p,)).fetchone()
        return Stored([(d, bytes(s)) for d, s in devices], [(n, bytes(s)) for n, s in links], row[0] if row else 0,
                      statuses, row[1] if row else None)

    def device_elsewhere(self, device: str):
        """(state, status JSON or None) of a device stored under another partition (the
        topology was re-partitioned), or None: its state moves here with the next commit."""
        with self.conn.transaction():
            row = self.conn.execute("SELECT d.state, s.status FROM linkseal_devices d LEFT JOIN linkseal_statuses s "
                                    "ON s.device = d.device WHERE d.device = %s AND d.partition != %s",
                                    (device, self.partition)).fetchone()
        return None if row is None else (bytes(row[0]), row[1])

    def commit(self, batch: Batch) -> None:
        conn, p = self.conn, self.partition
        last_id, last_hash = self._last_id, self._last_hash
        with conn.transaction():
            row = conn.execute("SELECT token FROM linkseal_partitions WHERE partition = %s FOR UPDATE", (p,)).fetchone()
            if row is None or row[0] != self.token:
                raise Fenced(f"partition {p} was taken by another worker (token {row and row[0]}, ours {self.token})")
            cur = conn.cursor()
            if batch.records:
                cur.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS incoming (LIKE {PG_TABLE}) ON COMMIT DELETE ROWS")
                with cur.copy("COPY incoming (device, epoch, seq, link, device_time_ms, verified_at, payload) "
                              "FROM STDIN") as copy:
                    for device, epoch, seq, link, device_time_ms, arrival, payload in batch.records:
                        copy.write_row((device, epoch, seq, link, device_time_ms, _timestamp(arrival), payload))
                cur.execute(f"INSERT INTO {PG_TABLE} SELECT * FROM incoming ON CONFLICT DO NOTHING")
            if batch.counts:
                cur.executemany("INSERT INTO linkseal_counts VALUES (%s, %s, %s, %s, %s) ON CONFLICT "
                                "(minute, scope, name, counter) DO UPDATE SET value = linkseal_counts.value + "
                                "EXCLUDED.value", batch.counts)
            if batch.devices:
                cur.executemany("INSERT INTO linkseal_devices VALUES (%s, %s, %s, %s) ON CONFLICT (device) DO UPDATE "
                                "SET partition = EXCLUDED.partition, link = EXCLUDED.link, state = EXCLUDED.state",
                                [(d, p, link, state) for d, link, state in batch.devices])
            if batch.statuses:
                cur.executemany("INSERT INTO linkseal_statuses VALUES (%s, %s) ON CONFLICT (device) DO UPDATE "
                                "SET status = EXCLUDED.status", batch.statuses)
            if batch.links:
                cur.executemany("INSERT INTO linkseal_links VALUES (%s, %s, %s) ON CONFLICT (partition, link) "
                                "DO UPDATE SET state = EXCLUDED.state", [(p, n, s) for n, s in batch.links])
            for event in batch.events:
                new_hash = event_hash(last_hash, event)
                last_id += 1
                cur.execute("INSERT INTO linkseal_events VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                            (p, last_id, event["t"], event["device"], event["link"], event["kind"], event["reason"],
                             last_hash, new_hash))
                last_hash = new_hash
            if batch.unknown_device is not None:
                cur.execute("UPDATE linkseal_partitions SET unknown_device = %s, intake_at = COALESCE(%s, intake_at) "
                            "WHERE partition = %s", (batch.unknown_device, batch.intake_at, p))
        self._last_id, self._last_hash = last_id, last_hash

    def close(self) -> None:
        self.conn.close()


def _timestamp(unix_seconds: float):
    from datetime import datetime, timezone

    return datetime.fromtimestamp(unix_seconds, timezone.utc)


class PostgresReader:
    """What `hub report` and `hub audit` read, over every partition."""

    def __init__(self, url: str):
        self.url = url
        self.conn = _connect(url)
        self.conn.autocommit = True

    def require_sound(self) -> None:
        """PostgreSQL checks its own pages; nothing to add here."""

    def counts_since(self, since_minute: int | None, scopes=("device", "link", "hub")) -> list:
        return self.conn.execute(
            "SELECT scope, name, counter, SUM(value)::bigint FROM linkseal_counts WHERE minute >= %s "
            "AND scope = ANY(%s) GROUP BY scope, name, counter",
            (since_minute if since_minute is not None else -(2**62), list(scopes))).fetchall()

    def device_links(self) -> dict:
        return dict(self.conn.execute("SELECT device, link FROM linkseal_devices").fetchall())

    def device_statuses(self, containing: str = "") -> tuple:
        return statuses_of(self.conn.execute("SELECT device, status FROM linkseal_statuses "
                                             "WHERE strpos(status, %s) > 0", (containing,)).fetchall())

    def device_radio(self) -> dict:
        return self.device_statuses('"radio"')[1]

    def events_since(self, since: float | None) -> list:
        rows = self.conn.execute("SELECT t, device, link, kind, reason FROM linkseal_events WHERE t >= %s "
                                 "ORDER BY t, partition, id", (since if since is not None else float("-inf"),))
        return [dict(zip(("t", "device", "link", "kind", "reason"), row)) for row in rows.fetchall()]

    # -- what the console reads (hub/service/console/api.py) ------------------------------

    def events_after(self, after_id: int, limit: int, kind=None, link=None, device=None) -> list:
        """Events of every partition by their global sequence number (`id` here). Workers commit
        concurrently, so a number can become visible after a higher one: a live view may miss
        such an event until it is reloaded (docs/hub.md, Console)."""
        where, params = event_filter("seq", "%s", after_id, kind, link, device)
        rows = self.conn.execute(f"SELECT seq, t, device, link, kind, reason FROM linkseal_events WHERE {where} "
                                 "ORDER BY seq LIMIT %s", (*params, limit)).fetchall()
        return [dict(zip(("id", "t", "device", "link", "kind", "reason"), row)) for row in rows]

    def device_counts(self, names: list) -> list:
        return self.conn.execute("SELECT name, counter, SUM(value)::bigint FROM linkseal_counts WHERE scope = 'device' "
                                 "AND name = ANY(%s) GROUP BY name, counter", (list(names),)).fetchall()

    def latest_minute(self) -> int | None:
        return self.conn.execute("SELECT MAX(minute) FROM linkseal_counts").fetchone()[0]

    def counts_by_minute(self, scope: str, name: str, since_minute: int, counters) -> list:
        return self.conn.execute("SELECT minute, counter, value FROM linkseal_counts WHERE scope = %s AND name = %s "
                                 "AND minute >= %s AND counter = ANY(%s) ORDER BY minute",
                                 (scope, name, since_minute, list(counters))).fetchall()

    def audit(self) -> tuple[int, str | None]:
        """(events checked, None) when every partition's chain holds, else what broke."""
        checked = 0
        partitions = [p for (p,) in self.conn.execute(
            "SELECT DISTINCT partition FROM linkseal_events ORDER BY partition").fetchall()]
        for p in partitions:
            prev, expected_id = GENESIS_HASH, 1
            for row_id, t, device, link, kind, reason, prev_hash, stored in self.conn.execute(
                    "SELECT id, t, device, link, kind, reason, prev_hash, hash FROM linkseal_events "
                    "WHERE partition = %s ORDER BY id", (p,)).fetchall():
                if prev_hash != prev or row_id != expected_id:
                    return checked, f"partition {p}, event {row_id}: does not follow the event before it"
                event = {"t": t, "device": device, "link": link, "kind": kind, "reason": reason}
                if event_hash(prev, event) != stored:
                    return checked, f"partition {p}, event {row_id}: its contents were changed after it was written"
                prev, expected_id = stored, expected_id + 1
                checked += 1
        return checked, None

    def consistency_problems(self) -> list[str]:
        """Where the tables disagree with each other: each device's and each link's counters are
        the sums of the per-minute deltas written beside them in the same transactions, and a
        device's stored records number its valid frames. Empty when they agree."""
        from hub.core.counters import LINK_SLOT_NAMES, LINK_SLOTS, SLOT_NAMES, counters_from
        from hub.core.verifier import Verifier

        sums = {}
        for scope, name, counter, total in self.counts_since(None):
            sums.setdefault((scope, name), {})[counter] = total
        problems = []
        records = dict(self.conn.execute("SELECT device, COUNT(*) FROM linkseal_records GROUP BY device").fetchall())
        for device, state in self.conn.execute("SELECT device, state FROM linkseal_devices").fetchall():
            counters, _ = Verifier.stored_counters(device, bytes(state))
            deltas = sums.get(("device", device), {})
            wrong = [n for i, n in enumerate(SLOT_NAMES) if counters[i] != deltas.get(n, 0)]
            if wrong:
                problems.append(f"device {device}: {', '.join(wrong)} differ from the sum of its per-minute counts")
            if records.get(device, 0) != counters[SLOT_NAMES.index("valid")]:
                problems.append(f"device {device}: {records.get(device, 0)} stored records for "
                                f"{counters[SLOT_NAMES.index('valid')]} valid frames")
        links = {}
        for name, state in self.conn.execute("SELECT link, state FROM linkseal_links").fetchall():
            counters = counters_from(bytes(state), LINK_SLOTS)
            total = links.setdefault(name, [0] * LINK_SLOTS)
            for i in range(LINK_SLOTS):
                total[i] += counters[i]
        for name, total in sorted(links.items()):
            deltas = sums.get(("link", name), {})
            wrong = [n for i, n in enumerate(LINK_SLOT_NAMES) if total[i] != deltas.get(n, 0)]
            if wrong:
                problems.append(f"link {name}: {', '.join(wrong[:5])} differ from the sum of its per-minute counts")
        return problems

    def close(self) -> None:
        self.conn.close()
