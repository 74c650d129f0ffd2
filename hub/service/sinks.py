"""Sinks: where authentic records go inward from the bastion (docs/hub.md, "Delivery").

A sink takes a batch of stored, valid records and returns only once the far side has them
(every PUBACK, or the PostgreSQL commit); any failure raises SinkError and the forwarder
(hub/service/forwarder.py) retries the same batch later. Delivery is therefore at least
once; the record id `device/epoch/seq` is the idempotency key, and PostgreSQL's primary key
makes it exactly once there.
"""

import base64
import json
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

VERIFIED_PREFIX = "linkseal/verified/"
PG_TABLE = "linkseal_records"
PG_SCHEMA = f"""CREATE TABLE IF NOT EXISTS {PG_TABLE} (
    device text NOT NULL, epoch bigint NOT NULL, seq bigint NOT NULL, link text NOT NULL,
    device_time_ms bigint, verified_at timestamptz NOT NULL, payload bytea NOT NULL,
    PRIMARY KEY (device, epoch, seq))"""
ACK_TIMEOUT = 10.0  # seconds for a batch's PUBACKs before the sink counts as down


class SinkError(Exception):
    """A delivery failed (the sink is down or refused); the batch stays undelivered."""


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


def verified_json(record: StoredRecord) -> bytes:
    """The one encoder of a verified record (MQTT sink; the contract in docs/hub.md)."""
    return json.dumps({"id": record.key, "device": record.device, "link": record.link, "epoch": record.epoch,
                       "seq": record.seq, "device_time_ms": record.device_time_ms, "verified_at": record.verified_at,
                       "payload_b64": base64.b64encode(record.payload).decode()}, separators=(",", ":")).encode()


def sink_name(url: str) -> str:
    """How a sink is named in logs, metrics and the outbox: its URL without credentials or query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class MqttSink:
    """QoS 1 publishes on linkseal/verified/<device>; a batch is delivered when every PUBACK is in."""

    def __init__(self, broker, client_id: str):
        import paho.mqtt.client as mqtt

        self.broker = broker
        self._mqtt = mqtt
        self._lock = threading.Condition()
        self._pending = set()
        self._connected = False
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True,
                             protocol=mqtt.MQTTv311)
        if broker.tls:
            client.tls_set(ca_certs=broker.ca_file, certfile=broker.cert_file, keyfile=broker.key_file,
                           cert_reqs=ssl.CERT_REQUIRED)
        if broker.username:
            client.username_pw_set(broker.username, broker.password)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self.client = client
        self._started = False

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        with self._lock:
            self._connected = not reason_code.is_failure
            self._lock.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        with self._lock:
            self._connected = False
            self._lock.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self._lock:
            self._pending.discard(mid)
            self._lock.notify_all()

    def _ensure_connected(self):
        if not self._started:
            try:
                self.client.connect(self.broker.host, self.broker.port, keepalive=30)
            except (OSError, ssl.SSLError) as exc:
                raise SinkError(f"cannot connect to {self.broker.host}:{self.broker.port}: "
                                f"{exc.strerror or exc}") from None
            self.client.loop_start()  # paho reconnects by itself from here on
            self._started = True
        with self._lock:
            if not self._lock.wait_for(lambda: self._connected, timeout=ACK_TIMEOUT):
                raise SinkError(f"no connection to {self.broker.host}:{self.broker.port}")

    def deliver(self, records) -> None:
        self._ensure_connected()
        with self._lock:
            self._pending.clear()
        for record in records:
            info = self.client.publish(VERIFIED_PREFIX + record.device, verified_json(record), qos=1)
            if info.rc != self._mqtt.MQTT_ERR_SUCCESS:
                raise SinkError(f"publish refused: {self._mqtt.error_string(info.rc)}")
            with self._lock:
                if not info.is_published():
                    self._pending.add(info.mid)
        deadline = time.monotonic() + ACK_TIMEOUT
        with self._lock:
            while self._pending:
                if not self._lock.wait(timeout=max(0.0, deadline - time.monotonic())):
                    if time.monotonic() >= deadline:
                        raise SinkError(f"{len(self._pending)} PUBACKs missing after {ACK_TIMEOUT:g} s")

    def close(self) -> None:
        if self._started:
            self.client.disconnect()
            self.client.loop_stop()


class PostgresSink:
    """Batches into linkseal_records: COPY into a temporary table, then INSERT ... ON CONFLICT
    DO NOTHING, one transaction per batch, so each record appears exactly once."""

    def __init__(self, url: str):
        self.url = url
        self.conn = None

    def _connect(self):
        import psycopg

        try:
            conn = psycopg.connect(self.url, connect_timeout=10)
            with conn.transaction():
                conn.execute(PG_SCHEMA)
        except psycopg.Error as exc:
            raise SinkError(f"PostgreSQL: {_first_line(exc)}") from None
        self.conn = conn

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
            raise SinkError(f"PostgreSQL: {_first_line(exc)}") from None

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
        broker = parse_broker(url, ca_file, cert_file, key_file, username, password_file, option="--forward")
        return MqttSink(broker, client_id)
    if scheme in ("postgresql", "postgres"):
        return PostgresSink(url)
    raise ConfigError(f"--forward {sink_name(url)!r}: expected mqtt://, mqtts:// or postgresql://")
