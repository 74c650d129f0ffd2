"""Real components for the hub tests and benchmarks: a Mosquitto broker and `linkseal hub run`.

Each test gets its own broker on a free loopback port with its own config, and waits on
conditions (a port accepting, a log line, a count in the database) with a timeout, never
on a fixed sleep.
"""

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from hub.core.report import build_stored_report
from hub.service.storage.sqlite import SQLiteStorage

LINKSEAL = Path(sys.executable).parent / "linkseal"


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if found is None:
        raise RuntimeError("mosquitto is not installed: `make test` installs it (apt-get install mosquitto)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, timeout=30.0, what="condition"):
    """Poll condition() until it returns something truthy; fail with `what` after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)  # polling interval, not synchronisation: the condition decides


def port_open(port) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Mosquitto:
    def __init__(self, directory: Path, port: int | None = None, auth=("allow_anonymous true",), tls=False):
        """auth: config lines for who may connect; tls: the listener needs mqtts (lines in auth)."""
        self.dir = Path(directory)
        self.port = port or free_port()
        self.tls = tls
        self.conf = self.dir / "mosquitto.conf"
        # Run as ourselves: as root, mosquitto would switch to its own user, which cannot
        # write this directory, and would silently keep no persistence and no log.
        self.conf.write_text(
            f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
            f"listener {self.port} 127.0.0.1\n"
            + "".join(line + "\n" for line in auth) +
            "persistence true\n"
            f"persistence_location {self.dir}/\n"
            "max_queued_messages 200000\n"
            "max_inflight_messages 1000\n"
            f"log_dest file {self.dir}/mosquitto.log\n")
        self.process = None

    @classmethod
    def from_config(cls, directory: Path, port: int, config_text: str, tls=False) -> "Mosquitto":
        """A broker running a given configuration (e.g. `hub broker-config`'s), as ourselves, with a log."""
        broker = cls.__new__(cls)
        broker.dir, broker.port, broker.tls, broker.process = Path(directory), port, tls, None
        broker.conf = broker.dir / "mosquitto-test.conf"
        broker.conf.write_text(f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
                               f"log_dest file {broker.dir}/mosquitto.log\n" + config_text)
        return broker

    def start(self):
        self.process = subprocess.Popen([mosquitto_binary(), "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        wait_for(lambda: port_open(self.port) or self.process.poll() is not None, 10, "mosquitto to listen")
        assert self.process.poll() is None, (self.dir / "mosquitto.log").read_text()
        return self

    def start_on_a_free_port(self, attempts=3):
        """start(), choosing another port if an outgoing connection took the free one meanwhile."""
        for _ in range(attempts - 1):
            try:
                return self.start()
            except AssertionError:
                self.port = free_port()
                self.conf.write_text(re.sub(r"listener \d+", f"listener {self.port}", self.conf.read_text()))
        return self.start()

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    @property
    def url(self):
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"


class HubProcess:
    def __init__(self, broker: Mosquitto, keys: Path, db: Path, log: Path, *extra, env=None):
        # --insecure-plaintext only allows the plaintext key files tests make; encrypted ones still work.
        self.args = [str(LINKSEAL), "hub", "run", "--broker", broker.url, "--keys", str(keys), "--db", str(db),
                     "--log-json", "--insecure-plaintext", *map(str, extra)]
        self.log = log
        self.db = db
        self.env = env
        self.process = None

    def start(self):
        self._log_handle = open(self.log, "a")
        env = {**os.environ, **self.env} if self.env else None
        self.process = subprocess.Popen(self.args, stdout=self._log_handle, stderr=self._log_handle, env=env)
        return self

    def events(self):
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]

    def wait_connected(self, count=1):
        """Wait for the hub's count-th subscription: from then on nothing published is missed."""
        wait_for(lambda: sum(e["event"] == "subscribed" for e in self.events()) >= count or self.process.poll(),
                 30, "the hub to connect and subscribe")
        assert self.process.poll() is None, self.log.read_text()

    def signal(self, sig):
        self.process.send_signal(sig)

    def wait(self, timeout=30):
        code = self.process.wait(timeout)
        self._log_handle.close()
        return code

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)


def stored_report(db: Path) -> dict:
    storage = SQLiteStorage(db, create=False)
    try:
        return build_stored_report(storage)
    finally:
        storage.close()


def frames_seen(db: Path) -> int:
    """Every frame the hub has committed an outcome for, unknown devices included."""
    if not db.exists():
        return 0
    try:
        report = stored_report(db)
    except Exception:  # the hub is creating the schema right now
        return 0
    return sum(link["received"] for link in report["links"].values()) + report["unknown_device"]


def publish(port: int, messages, qos=1):
    """Publish (topic, payload) pairs in order and wait until the broker has taken each."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-pub-{time.monotonic_ns()}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=qos) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(30)
    finally:
        client.disconnect()
        client.loop_stop()


def publish_paced(port: int, messages, per_second: float, qos=1):
    """Publish like a device sending at a steady rate: message i leaves i / per_second after the
    first (the workload's pace, not a wait for anything), each taken by the broker."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-paced-{time.monotonic_ns()}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        start = time.monotonic()
        for i, (topic, payload) in enumerate(messages):
            time.sleep(max(0.0, start + i / per_second - time.monotonic()))
            client.publish(topic, payload, qos=qos).wait_for_publish(30)
    finally:
        client.disconnect()
        client.loop_stop()


PG_SERVER = "postgresql://postgres@127.0.0.1:5432"


class PostgresDatabase:
    """A database of the test's own on the machine's PostgreSQL (trust auth), dropped afterwards."""

    def __init__(self, name_prefix="linkseal_test"):
        import psycopg

        self.name = f"{name_prefix}_{os.getpid()}_{time.monotonic_ns()}"
        try:
            self._admin = psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            raise RuntimeError(f"PostgreSQL is not reachable on 127.0.0.1:5432 ({exc}); `make test` starts it with "
                               "pg_ctlcluster, or start it yourself") from None
        self._admin.execute(f'CREATE DATABASE "{self.name}"')
        self.url = f"{PG_SERVER}/{self.name}"

    def query(self, sql, params=()):
        import psycopg

        with psycopg.connect(self.url) as conn:
            return conn.execute(sql, params).fetchall()

    def execute(self, sql, params=()) -> None:
        import psycopg

        with psycopg.connect(self.url) as conn:
            conn.execute(sql, params)

    def refuse_connections(self, refuse: bool) -> None:
        """A sink outage as the hub sees it: connections refused, open ones cut."""
        self._admin.execute(f'ALTER DATABASE "{self.name}" WITH ALLOW_CONNECTIONS {"false" if refuse else "true"}')
        if refuse:
            self._admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                                (self.name,))

    def drop(self) -> None:
        self._admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self._admin.close()


class Subscriber:
    """A QoS 1 subscriber that keeps every message it gets (topic, payload), in order."""

    def __init__(self, port: int, topic: str, persistent: bool = False, login=None):
        """persistent: a session the broker keeps (and queues for) while this client or the broker is down;
        login: (username, password)."""
        self.messages = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{time.monotonic_ns()}",
                                  clean_session=not persistent)
        self.client.reconnect_delay_set(0.1, 1)
        if login:
            self.client.username_pw_set(*login)
        self.client.on_connect = lambda client, *_: client.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise AssertionError(f"no SUBACK for {topic} within 10 s")

    def _on_message(self, client, userdata, message):
        with self._lock:
            self.messages.append((message.topic, message.payload))

    def received(self) -> list:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class RelayProcess:
    """`linkseal relay serial` on a port, logging JSON Lines to a file; stopped with SIGTERM
    (its last line says every count) or killed."""

    def __init__(self, broker: Mosquitto, port: str, state_dir: Path, log: Path, *extra):
        self.args = [str(LINKSEAL), "relay", "serial", "--port", port, "--broker", broker.url, "--name", "line-1",
                     "--state-dir", str(state_dir), "--log-json", *map(str, extra)]
        self.log = log
        self.process = None

    def start(self):
        self._log_handle = open(self.log, "a")
        self.process = subprocess.Popen(self.args, stdout=self._log_handle, stderr=self._log_handle)
        wait_for(lambda: any(e["event"] == "connected" for e in self.events()) or self.process.poll() is not None,
                 30, "the relay to reach its broker")
        assert self.process.poll() is None, self.log.read_text()
        return self

    def events(self):
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]

    def stop(self) -> dict:
        """SIGTERM, then the counts of its last line ({} if it was killed before)."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        self._log_handle.close()
        stopped = [e for e in self.events() if e["event"] == "stopped"]
        return stopped[-1] if stopped else {}

    def kill(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            self._log_handle.close()
