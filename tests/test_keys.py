"""Hub key file: encryption at rest, permissions, provisioning, rotation, revocation."""

import json
import stat

import pytest

from agent import Sealer, topic_for
from hub.core.verifier import Verifier
from hub.keys import keystore
from hub.keys.keyfile import KeyFile, KeyFileError, derive_device_key, load_device_config

from .conftest import link_names

PASS = b"correct horse battery staple"


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_encrypted_key_file_round_trip(tmp_path):
    path = tmp_path / "hub.keys"
    keyfile = KeyFile.create(path, PASS)
    config = keyfile.provision("pump-1", "wifi")
    assert mode(path) == 0o600
    envelope = json.loads(path.read_text())
    assert envelope["format"] == keystore.ENVELOPE_FORMAT and envelope["kdf"]["name"] == "argon2id"
    assert envelope["cipher"] == "AES-256-GCM" and "master_secret" not in path.read_text()
    assert config["key"] not in path.read_text()
    reloaded = KeyFile.load(path, PASS)
    assert reloaded.encrypted_with == "argon2id" and reloaded.device_config("pump-1") == config
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        KeyFile.load(path, b"wrong")
    with pytest.raises(KeyFileError, match="is encrypted and no passphrase"):
        KeyFile.load(path)


def test_header_is_authenticated(tmp_path):
    path = tmp_path / "hub.keys"
    KeyFile.create(path, PASS)
    envelope = json.loads(path.read_text())
    # Same key (the KDF fields that derive it are untouched), but a changed header: refused.
    envelope["cipher"] = "AES-256-GCM-but-weaker"
    path.write_text(json.dumps(envelope))
    with pytest.raises(KeyFileError, match="wrong passphrase, or the file was changed"):
        KeyFile.load(path, PASS)


def test_scrypt_fallback_is_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(keystore, "default_kdf", lambda: dict(keystore.SCRYPT))
    path = tmp_path / "hub.keys"
    KeyFile.create(path, PASS)
    kdf = json.loads(path.read_text())["kdf"]
    assert (kdf["name"], kdf["n"], kdf["r"], kdf["p"]) == ("scrypt", 2**17, 8, 1)
    monkeypatch.undo()
    assert KeyFile.load(path, PASS).encrypted_with == "scrypt"


def test_plaintext_needs_explicit_consent_and_migrates_in_place(tmp_path):
    path = tmp_path / "hub.keys"
    config = KeyFile.create(path).provision("pump-1", "ble")
    with pytest.raises(KeyFileError, match="is not encrypted; encrypt it with `linkseal keys encrypt"):
        KeyFile.load(path)
    keyfile = KeyFile.load(path, allow_plaintext=True)
    keyfile.encrypt(PASS)
    assert "master_secret" not in path.read_text() and mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["hub.keys"]  # no temporary file left behind
    assert KeyFile.load(path, PASS).device_config("pump-1") == config


def test_readable_by_others_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "hub.keys"
    KeyFile.create(path, PASS)
    path.chmod(0o640)
    with pytest.raises(KeyFileError, match=r"permissions 0640 .* run `chmod 600 .*hub.keys`"):
        KeyFile.load(path, PASS)
    device = tmp_path / "device.json"
    device.write_text("{}")
    device.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_device_config(device)


def test_init_never_replaces_a_key_file(tmp_path):
    path = tmp_path / "hub.keys"
    KeyFile.create(path, PASS)
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):
        KeyFile.create(path, PASS)
    assert path.read_bytes() == before


def test_provisioned_device_seals_frames_the_hub_accepts(tmp_path):
    keyfile = KeyFile.create(tmp_path / "hub.keys", PASS)
    config = keyfile.provision("pump-1", "lora", tag_len=8, key_id=2, form="full")
    assert set(config) >= {"device_id", "key", "key_id", "link", "tag_len", "mqtt_username", "mqtt_password"}
    assert (config["link"], config["tag_len"], config["key_id"]) == ("lora", 8, 2)
    verifier = Verifier(KeyFile.load(tmp_path / "hub.keys", PASS).device_keys(), link_names())
    sealer = Sealer("pump-1", bytes.fromhex(config["key"]), key_id=2, link="lora", tag_len=8)
    assert verifier.verify(topic_for("pump-1"), sealer.seal(b"t=4"), 0.0).outcome == "valid"
    assert config["key"] not in repr(keyfile) and config["mqtt_password"] not in repr(keyfile)


def test_rotation_grace_then_retired(tmp_path):
    keyfile = KeyFile.create(tmp_path / "hub.keys", PASS)
    old = keyfile.provision("pump-1", "wifi")
    new = keyfile.rotate("pump-1", grace_s=3600, now=1000.0)
    assert (old["key_id"], new["key_id"]) == (0, 1) and old["key"] != new["key"]
    assert old["mqtt_password"] == new["mqtt_password"]
    verifier = Verifier(KeyFile.load(tmp_path / "hub.keys", PASS).device_keys(), link_names())
    old_sealer = Sealer("pump-1", bytes.fromhex(old["key"]), key_id=0, epoch=1)
    new_sealer = Sealer("pump-1", bytes.fromhex(new["key"]), key_id=1, epoch=2)
    topic = topic_for("pump-1")
    assert verifier.verify(topic, old_sealer.seal(b"a"), 2000.0).outcome == "valid"  # inside the grace period
    assert verifier.verify(topic, new_sealer.seal(b"b"), 2000.0).outcome == "valid"
    late = verifier.verify(topic, old_sealer.seal(b"c"), 4601.0)  # after it
    assert (late.outcome, late.reason) == ("forged", "retired key")
    assert verifier.verify(topic, new_sealer.seal(b"d"), 4601.0).outcome == "valid"


def test_revocation_refuses_everything_later(tmp_path):
    keyfile = KeyFile.create(tmp_path / "hub.keys", PASS)
    config = keyfile.provision("pump-1", "wifi")
    keyfile.provision("pump-2", "wifi")
    keyfile.revoke("pump-1")
    verifier = Verifier(KeyFile.load(tmp_path / "hub.keys", PASS).device_keys(), link_names())
    verdict = verifier.verify(topic_for("pump-1"), Sealer("pump-1", bytes.fromhex(config["key"])).seal(b"x"), 5.0)
    assert (verdict.outcome, verdict.reason) == ("forged", "device revoked")
    assert verifier.events[-1]["kind"] == "forged" and verifier.events[-1]["device"] == "pump-1"


def test_reload_keeps_windows_and_applies_revocation(tmp_path):
    keyfile = KeyFile.create(tmp_path / "hub.keys", PASS)
    config = keyfile.provision("pump-1", "wifi")
    verifier = Verifier(keyfile.device_keys(), link_names())
    sealer = Sealer("pump-1", bytes.fromhex(config["key"]), epoch=1)
    first = sealer.seal(b"a")
    assert verifier.verify(topic_for("pump-1"), first, 1.0).outcome == "valid"
    keyfile.provision("pump-2", "ble")
    verifier.update_devices(keyfile.device_keys())
    assert verifier.verify(topic_for("pump-1"), first, 2.0).outcome == "duplicate"  # window kept
    keyfile.revoke("pump-1")
    verifier.update_devices(keyfile.device_keys())
    assert verifier.verify(topic_for("pump-1"), sealer.seal(b"b"), 3.0).reason == "device revoked"


def test_derived_keys_differ_by_device_and_key_id():
    master = bytes(32)
    keys = {derive_device_key(master, d, k) for d in ("a", "b", "ab") for k in (0, 1)}
    assert len(keys) == 6 and all(len(k) == 32 for k in keys)


@pytest.mark.parametrize("content,message", [
    ("not json", "not a key file"),
    ('{"format": "other"}', "not a linkseal hub key file"),
    ('{"format": "linkseal-hub-keys/1", "master_secret": "zz"}', "master_secret"),
    ('{"format": "linkseal-hub-keys/1", "master_secret": "' + "00" * 32 + '", "devices": {"a/b": {}}}',
     "device 'a/b'"),
])
def test_bad_key_files_are_named(tmp_path, content, message):
    path = tmp_path / "hub.keys"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match=message) as raised:
        KeyFile.load(path, PASS, allow_plaintext=True)
    assert str(path) in str(raised.value)


def test_provision_refuses_unknown_link_and_keeps_the_file(tmp_path):
    keyfile = KeyFile.create(tmp_path / "hub.keys", PASS)
    before = (tmp_path / "hub.keys").read_bytes()
    with pytest.raises(ValueError, match="unknown link"):
        keyfile.provision("pump-1", "smoke-signals")
    with pytest.raises(ValueError, match="device id"):
        keyfile.provision("pump/1", "wifi")
    assert (tmp_path / "hub.keys").read_bytes() == before


def test_device_config_checks(tmp_path):
    path = tmp_path / "device.json"
    path.write_text('{"device_id": "a", "key": "00", "key_id": 0, "link": "wifi", "tag_len": 16}')
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="shorter than 16 bytes"):
        load_device_config(path)
    path.write_text('{"device_id": "a"}')
    with pytest.raises(KeyFileError, match="'key' is missing"):
        load_device_config(path)


def test_compact_provisioning_checks_the_uplink_size(tmp_path):
    """The compact form on a LoRaWAN link: 8-byte tag by default, the payload limit of its region
    and data rate in the config; a data rate too small for the overhead plus one byte, or the
    compact form on a link that needs its CRC, is refused (exit 2, one line)."""
    import subprocess

    from tools.services import LINKSEAL

    keyfile = KeyFile.create(tmp_path / "hub.keys")
    config = keyfile.provision("field-tx-3", "lora", form="compact")
    assert (config["form"], config["tag_len"], config["max_frame"]) == ("compact", 8, 51)  # EU868 DR0
    assert keyfile.provision("field-tx-4", "lora", form="compact", region="US915", data_rate="DR1")["max_frame"] == 53
    assert keyfile.provision("pump-1", "wifi")["form"] == "full"
    specs = {spec.device_id: spec for spec in keyfile.device_keys()}
    assert specs["field-tx-3"].compact and not specs["pump-1"].compact
    rotated = keyfile.rotate("field-tx-3")
    assert rotated["form"] == "compact"  # rotation keeps the form
    cases = [(["field-tx-5", "--link", "lora", "--form", "compact", "--region", "US915", "--data-rate", "DR0"],
              "an uplink carries 11 bytes"),
             (["pump-2", "--link", "wifi", "--form", "compact"], "does not drop damaged frames"),
             (["field-tx-6", "--link", "lora", "--region", "AS923"], "unknown region 'AS923'")]
    for argv, message in cases:
        result = subprocess.run([str(LINKSEAL), "keys", "provision", *argv, "--keys", str(keyfile.path),
                                 "--insecure-plaintext", "--out", str(tmp_path / "d.json")], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 2 and message in result.stderr, (argv, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
