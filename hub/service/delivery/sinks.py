"""Sinks: where authentic records go inward from the bastion (docs/hub.md, "Delivery").

A sink takes a batch of stored, valid records and returns only once the far side has them
(every PUBACK, or the PostgreSQL commit); any failure raises SinkError and the forwarder
(hub/service/delivery/forwarder.py) retries the same batch later. Delivery is therefore at least
once; the record id `device/epoch/seq` is the idempotency key, and PostgreSQL's primary key
makes it exactly once there.
"""

import binascii
import re
import ssl
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from hub.service.delivery.mqtt_publisher import MqttPublisher, MqttPublishError
from hub.service.storage.sqlite import StoredRecord

VERIFIED_PREFIX = "linkseal/verified/"
PG_TABLE = "linkseal_records"
PG_SCHEMA = f"""CREATE TABLE IF NOT EXISTS {PG_TABLE} (
    device text NOT NULL, epoch bigint NOT NULL, seq bigint NOT NULL, link text NOT NULL,
    device_time_ms bigint, verified_at timestamptz NOT NULL, payload bytea NOT NULL,
    PRIMARY KEY (device, epoch, seq))"""
ACK_TIMEOUT = 10.0  # seconds for a batch's PUBACKs before the sink counts as down
LOCK_TIMEOUT_MS = 5000  # a PostgreSQL sink waits this long for a lock held elsewhere, then is down
STATEMENT_TIMEOUT_MS = 60000


class SinkError(Exception):
    """A delivery failed (the sink is down or refused); the batch stays undelivered."""


def verified_json(record: StoredRecord) -> bytes:
    """The one encoder of a verified record (MQTT sink; the contract in docs/hub.md).

    Formatted directly rather than through json.dumps (three times faster): device ids and link
    names are restricted to letters, digits and - _ . : (agent.check_device_id, the link
    registry), so they need no escaping, and floats print as JSON numbers."""
    device_time = b"null" if record.device_time_ms is None else b"%d" % record.device_time_ms
    return (b'{"id":"%s/%d/%d","device":"%s","link":"%s","epoch":%d,"seq":%d,"device_time_ms":%s,'
            b'"verified_at":%s,"payload_b64":"%s"}' % (
                record.device.encode(), record.epoch, record.seq, record.device.encode(), record.link.encode(),
                record.epoch, record.seq, device_time, repr(float(record.verified_at)).encode(),
                binascii.b2a_base64(record.payload, newline=False)))


def largest_verified_message() -> int:
    """The largest verified record the MQTT sink can publish: the largest frame the link
    registry allows, as payload, with a device id of the longest allowed and every number at
    its widest (for the broker's message_size_limit)."""
    from agent.sealer import MAX_DEVICE_ID_LEN
    from hardware.link_registry import load_links

    largest_frame = max(link.mtu for link in load_links().values())
    widest = StoredRecord(2**63 - 1, "d" * MAX_DEVICE_ID_LEN, 2**32 - 1, 2**32 - 1, "x" * 32, 2**53 - 1,
                          -1.2345678901234567e-300, bytes(largest_frame))  # the widest float repr
    return len(verified_json(widest))


def postgres_options(url, ca_file=None, cert_file=None, key_file=None, username=None, password_file=None) -> dict:
    """psycopg connection arguments from a [[forward]] table's TLS and login settings, each file
    checked now (a sink that cannot use them must not start and fail later): ca_file makes the
    server's certificate and name checked (sslmode verify-full)."""
    from hub.service.config import ConfigError

    where = f"[[forward]] {sink_name(url)}"
    if bool(cert_file) != bool(key_file):
        raise ConfigError(f"{where}: cert_file and key_file go together (client certificate)")
    options = {}
    for name, path, argument in (("ca_file", ca_file, "sslrootcert"), ("cert_file", cert_file, "sslcert"),
                                 ("key_file", key_file, "sslkey")):
        if path:
            if not Path(path).is_file():
                raise ConfigError(f"{where}: {name} {path}: no such file")
            options[argument] = str(path)
    if ca_file:
        options["sslmode"] = "verify-full"
    if username:
        options["user"] = username
    if password_file:
        try:
            options["password"] = Path(password_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{where}: password_file {password_file}: {exc.strerror}") from None
    return options


def sink_name(url: str) -> str:
    """How a sink is named in logs, metrics and the outbox: its URL without credentials or query
    (a key=value connection string: without its password)."""
    if "://" not in url:
        return re.sub(r"password\s*=\s*('(?:[^'\\]|\\.)*'|\S*)", "password=...", url)
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]  # as written: a bad port is reported by open_sink, not here
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class MqttSink:
    """QoS 1 publishes on linkseal/verified/<device>; a batch is delivered when every PUBACK is in."""

    def __init__(self, broker, client_id: str):
        tls = None
        if broker.tls:
            tls = ssl.create_default_context(cafile=broker.ca_file)
            if broker.cert_file:
                tls.load_cert_chain(broker.cert_file, broker.key_file)
        self.publisher = MqttPublisher(broker.host, broker.port, client_id, broker.username, broker.password, tls,
                                       timeout=ACK_TIMEOUT)

    def deliver(self, records) -> None:
        try:
            self.publisher.publish_batch([((VERIFIED_PREFIX + r.device).encode(), verified_json(r)) for r in records])
        except MqttPublishError as exc:
            raise SinkError(str(exc)) from None

    def close(self) -> None:
        self.publisher.close()


class PostgresSink:
    """Batches into linkseal_records: COPY into a temporary table, then INSERT ... ON CONFLICT
    DO NOTHING, one transaction per batch, so each record appears exactly once."""

    def __init__(self, url: str, **options):
        """options: psycopg connection arguments (postgres_options: TLS files, user, password)."""
        self.url = url
        self.options = options
        self.conn = None

    def _connect(self):
        import psycopg

        try:
            # A table or row lock held elsewhere fails the batch after LOCK_TIMEOUT_MS instead of
            # hanging: the sink shows as down, and a stop never waits on it.
            conn = psycopg.connect(self.url, connect_timeout=10, options=f"-c lock_timeout={LOCK_TIMEOUT_MS} "
                                   f"-c statement_timeout={STATEMENT_TIMEOUT_MS}", **self.options)
            with conn.transaction():
                conn.execute(PG_SCHEMA)
        except psycopg.Error as exc:
            raise SinkError(f"PostgreSQL: {self._redact(_first_line(exc))}") from None
        self.conn = conn

    def _redact(self, text: str) -> str:
        """An error line without any password the sink was given (errors can quote the conninfo)."""
        for secret in (self.options.get("password"), urlsplit(self.url).password):
            if secret:
                text = text.replace(secret, "...")
        return sink_name(text) if "password" in text else text

    def deliver(self, records) -> None:
        import psycopg

        if self.conn is None or self.conn.closed:
            self._connect()
        try:
            with self.conn.transaction():
                self.conn.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS incoming (LIKE {PG_TABLE}) "
                                  "ON COMMIT DELETE ROWS")
                with self.conn.cursor().copy("COPY incoming (device, epoch, seq, link, device_time_ms, "
                                             "verified_at, payload) FROM STDIN") as copy:
                    for r in records:
                        copy.write_row((r.device, r.epoch, r.seq, r.link, r.device_time_ms,
                                        _timestamp(r.verified_at), r.payload))
                self.conn.execute(f"INSERT INTO {PG_TABLE} SELECT * FROM incoming ON CONFLICT DO NOTHING")
        except psycopg.Error as exc:
            self.close()
            raise SinkError(f"PostgreSQL: {self._redact(_first_line(exc))}") from None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _timestamp(unix_seconds: float):
    from datetime import datetime, timezone

    return datetime.fromtimestamp(unix_seconds, timezone.utc)


def _first_line(exc) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def open_sink(url: str, client_id: str, ca_file=None, cert_file=None, key_file=None, username=None,
              password_file=None):
    """A sink for an mqtt://, mqtts:// or postgresql:// URL; ConfigError for anything else."""
    from hub.service.config import ConfigError, parse_broker

    scheme = urlsplit(url).scheme
    if scheme in ("mqtt", "mqtts"):
        broker = parse_broker(url, ca_file, cert_file, key_file, username, password_file, option="--forward",
                              password_from_environment=False)
        return MqttSink(broker, client_id)
    if scheme in ("postgresql", "postgres"):
        return PostgresSink(url, **postgres_options(url, ca_file, cert_file, key_file, username, password_file))
    raise ConfigError(f"--forward {sink_name(url)!r}: expected mqtt://, mqtts:// or postgresql://")
