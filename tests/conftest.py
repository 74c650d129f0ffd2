import json
import os
import signal
import time
from pathlib import Path

import pytest

from hardware.link_registry import links_by_code
from hub.core.verifier import DeviceKeys, Verifier
from tools.services import Mosquitto

VECTORS = Path(__file__).resolve().parent / "vectors"


def _processes_of(base: str) -> dict:
    """pid -> command line of every process whose command line or environment names base."""
    found, marker = {}, base.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            if marker in cmdline or marker in (entry / "environ").read_bytes():
                found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
    return found


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind(tmp_path_factory):
    """Every broker, hub, agent and epmd a test starts runs in (or names) the session's temporary
    directory: when the session ends none may be left. Leftovers are killed, and reported."""
    base = str(tmp_path_factory.getbasetemp()) + "/"
    yield
    deadline = time.monotonic() + 15
    while _processes_of(base) and time.monotonic() < deadline:  # a stop() may still be reaping
        time.sleep(0.2)
    left = _processes_of(base)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, "processes the tests started are still running: " + "; ".join(
        f"{pid}: {cmd[:200]}" for pid, cmd in left.items())
KEY = bytes(range(0x20, 0x40))


def load_vectors(name):
    return json.loads((VECTORS / f"{name}.json").read_text())


def link_names():
    return {code: link.name for code, link in links_by_code().items()}


def make_verifier(*devices):
    """A verifier for (device_id, key, link, min_tag_len) tuples; default one wifi device."""
    specs = devices or (("pump-1", KEY, "wifi", 16),)
    return Verifier([DeviceKeys(d, {0: k}, link, tag) for d, k, link, tag in specs], link_names())


@pytest.fixture
def verifier():
    return make_verifier()


def own_mosquitto(tmp_path, name):
    """A real Mosquitto on a free loopback port, with its own config and directory, stopped afterwards."""
    directory = tmp_path / name
    directory.mkdir()
    mosquitto = Mosquitto(directory).start_on_a_free_port()
    yield mosquitto
    mosquitto.stop()


@pytest.fixture
def keys(tmp_path):
    """A hub key file (plaintext: tests only) to provision devices into."""
    from hub.keys.keyfile import KeyFile

    return KeyFile.create(tmp_path / "hub.keys")


@pytest.fixture
def broker(tmp_path):
    """The device network's broker."""
    yield from own_mosquitto(tmp_path, "broker")


@pytest.fixture
def postgres():
    """A PostgreSQL database of the test's own, dropped afterwards (fails, never skips, without a server)."""
    from tools.services import PostgresDatabase

    database = PostgresDatabase()
    yield database
    database.drop()


@pytest.fixture
def sink_broker(tmp_path):
    """A second Mosquitto: the trusted side's broker the hub forwards to."""
    yield from own_mosquitto(tmp_path, "sink-broker")
