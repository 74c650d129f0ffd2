"""Hub key file and device provisioning."""

import json
import stat

import pytest

from agent import Sealer, topic_for
from hub.keys import KeyFile, KeyFileError, derive_device_key, load_device_config
from hub.verifier import Verifier

from .conftest import link_names


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_init_creates_a_private_file_and_never_replaces_one(tmp_path):
    path = tmp_path / "hub.keys"
    keyfile = KeyFile.create(path)
    assert mode(path) == 0o600
    assert len(bytes.fromhex(json.loads(path.read_text())["master_secret"])) == 32
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):
        KeyFile.create(path)
    assert path.read_bytes() == before
    assert "master" not in repr(keyfile) and json.loads(before)["master_secret"] not in repr(keyfile)


def test_provisioned_device_seals_frames_the_hub_accepts(tmp_path):
    keyfile = KeyFile.create(tmp_path / "hub.keys")
    config = keyfile.provision("pump-1", "lora", tag_len=8, key_id=2)
    assert set(config) >= {"device_id", "key", "key_id", "link", "tag_len"}
    assert (config["link"], config["tag_len"], config["key_id"]) == ("lora", 8, 2)
    reloaded = KeyFile.load(tmp_path / "hub.keys")
    assert reloaded.devices == {"pump-1": {"link": "lora", "tag_len": 8, "key_id": 2}}
    verifier = Verifier(reloaded.device_keys(), link_names())
    sealer = Sealer("pump-1", bytes.fromhex(config["key"]), key_id=2, link="lora", tag_len=8)
    assert verifier.verify(topic_for("pump-1"), sealer.seal(b"t=4"), 0.0).outcome == "valid"


def test_derived_keys_differ_by_device_and_key_id():
    master = bytes(32)
    keys = {derive_device_key(master, d, k) for d in ("a", "b", "ab") for k in (0, 1)}
    assert len(keys) == 6 and all(len(k) == 32 for k in keys)


@pytest.mark.parametrize("content,message", [
    ("not json", "not JSON"),
    ('{"format": "other"}', "not a linkseal hub key file"),
    ('{"format": "linkseal-hub-keys/1", "master_secret": "zz"}', "master_secret"),
    ('{"format": "linkseal-hub-keys/1", "master_secret": "' + "00" * 32 + '", "devices": {"a/b": {}}}',
     "device 'a/b'"),
])
def test_bad_key_files_are_named(tmp_path, content, message):
    path = tmp_path / "hub.keys"
    path.write_text(content)
    with pytest.raises(KeyFileError, match=message) as raised:
        KeyFile.load(path)
    assert str(path) in str(raised.value)


def test_provision_refuses_unknown_link_and_keeps_the_file(tmp_path):
    keyfile = KeyFile.create(tmp_path / "hub.keys")
    before = (tmp_path / "hub.keys").read_bytes()
    with pytest.raises(ValueError, match="unknown link"):
        keyfile.provision("pump-1", "smoke-signals")
    with pytest.raises(ValueError, match="device id"):
        keyfile.provision("pump/1", "wifi")
    assert (tmp_path / "hub.keys").read_bytes() == before


def test_device_config_checks(tmp_path):
    path = tmp_path / "device.json"
    path.write_text('{"device_id": "a", "key": "00", "key_id": 0, "link": "wifi", "tag_len": 16}')
    with pytest.raises(KeyFileError, match="shorter than 16 bytes"):
        load_device_config(path)
    path.write_text('{"device_id": "a"}')
    with pytest.raises(KeyFileError, match="'key' is missing"):
        load_device_config(path)
