import json
from pathlib import Path

import pytest

from hardware.link_registry import links_by_code
from hub.core.verifier import DeviceKeys, Verifier
from tools.services import Mosquitto

VECTORS = Path(__file__).resolve().parent / "vectors"
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
