"""Records encrypted end to end (docs/protocol.md, "Encryption"): AES-128-CTR from the agent's
own counter mode over an ECB block function, encrypt-then-MAC, zero extra bytes.

The counter mode runs on CPython (`cryptography`'s ECB) and on MicroPython's Unix port
(`cryptolib`, which the WebAssembly port lacks): both give SP 800-38A's vector and the same
frames, which the hub verifies and decrypts. End to end: the Linux agent and the firmware (on
the Unix port) through a real Mosquitto to `hub run` and its PostgreSQL sink."""

import hmac
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from agent import frame as wire
from agent import topic_for
from agent.cipher import ctr_xor, encryption_key
from agent.sealer import sealer_for, status_topic_for
from agent.status import BIRTH, status_payload
from firmware.host.build import agent_settings, build
from hardware.board_registry import BOARDS_DIR, board
from hardware.link_registry import links_by_code
from hub.core.verifier import Verifier
from hub.keys.keyfile import write_private_json
from shared.aes import ecb_block
from shared.settings import parse_broker
from simulator.micropython_lib import install as install_umqtt
from tools.micropython import micropython_unix, run_micropython_unix
from tools.services import HubProcess, Subscriber, stored_report, wait_for

LINKSEAL = Path(sys.executable).parent / "linkseal"
# NIST SP 800-38A, F.5.1 CTR-AES128.Encrypt.
F51_KEY = "2b7e151628aed2a6abf7158809cf4f3c"
F51_COUNTER = "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff"
F51_PLAIN = ("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
             "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710")
F51_CIPHER = ("874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff"
              "5ae4df3edbd5d35e5b4f09020db03eab1e031dda2fbe03d1792170a0f3009cee")
PAYLOADS = [b"", b"x", b"heart rate 72", bytes(range(16)), bytes(range(17)), b"spo2 97 %" * 7, bytes(187)]


def names():
    return {code: link.name for code, link in links_by_code().items()}


def test_sp800_38a_f51_through_the_agents_counter_mode_on_cpython_and_micropython():
    counter = bytes.fromhex(F51_COUNTER)
    first = int.from_bytes(counter[12:], "big")
    got = ctr_xor(ecb_block(bytes.fromhex(F51_KEY)), counter[:12], first, bytes.fromhex(F51_PLAIN))
    assert got.hex() == F51_CIPHER
    # Decryption is the same operation.
    assert ctr_xor(ecb_block(bytes.fromhex(F51_KEY)), counter[:12], first, got).hex() == F51_PLAIN
    out = run_micropython_unix(
        "import binascii\nfrom agent.cipher import ctr_xor\nimport cryptolib\n"
        f"block = cryptolib.aes(binascii.unhexlify('{F51_KEY}'), 1).encrypt\n"
        f"c = binascii.unhexlify('{F51_COUNTER}')\n"
        f"print(binascii.hexlify(ctr_xor(block, c[:12], int.from_bytes(c[12:], 'big'), "
        f"binascii.unhexlify('{F51_PLAIN}'))).decode())\n")
    assert out.strip() == F51_CIPHER


def test_the_encryption_key_is_hkdf_expand_of_the_device_key_and_not_the_mac_key(keys):
    device_key = bytes.fromhex(keys.provision("pump-1", "wifi", encrypt=True)["key"])
    expected = HKDFExpand(hashes.SHA256(), 16, b"linkseal/v1 encryption key").derive(device_key)
    assert encryption_key(device_key) == expected
    assert expected not in device_key
    assert encryption_key(bytes.fromhex(keys.provision("pump-2", "wifi")["key"])) != expected


def test_micropython_and_cpython_seal_the_same_encrypted_frames_and_the_hub_opens_them(tmp_path, keys):
    config = keys.provision("pump-1", "wifi", encrypt=True)
    code = ("import json, binascii\nfrom agent.sealer import sealer_for\n"
            "sealer = sealer_for(json.load(open('device.json')), 7)\n"
            f"for p in {PAYLOADS!r}:\n    print(binascii.hexlify(sealer.seal(p)).decode())\n")
    board_frames = [bytes.fromhex(line) for line in
                    run_micropython_unix(code, {"device.json": json.dumps(config)}).split()]
    sealer = sealer_for(config, 7, ecb_block)
    host_frames = [sealer.seal(p) for p in PAYLOADS]
    assert board_frames == host_frames
    for data, payload in zip(board_frames, PAYLOADS):
        assert len(data) == len(sealer_for(keys.provision("clear-1", "wifi", save=False), 7).seal(payload))
        assert data[0] & wire.FLAG_ENCRYPTED
        if len(payload) >= 4:
            assert payload not in data
    verifier = Verifier(keys.device_keys(), names())
    verdicts = [verifier.verify(topic_for("pump-1"), data, 1.0) for data in board_frames]
    assert [(v.outcome, v.payload) for v in verdicts] == [("valid", p) for p in PAYLOADS]


def test_altered_ciphertext_with_its_crc_fixed_is_forged_and_never_decrypted(keys):
    sealer = sealer_for(keys.provision("pump-1", "wifi", encrypt=True), 1, ecb_block)
    data = bytearray(sealer.seal(b"infusion rate 4.0 ml/h"))
    _, _, _, _, _, start, _, _ = wire.decode(bytes(data))
    data[start + 3] ^= 0x01  # flip one bit of the plaintext behind it: CTR is malleable, the MAC is not
    data[-4:] = wire.crc_trailer(bytes(data[:-4]))
    verifier = Verifier(keys.device_keys(), names())
    verdict = verifier.verify(topic_for("pump-1"), bytes(data), 1.0)
    assert (verdict.outcome, verdict.payload, verdict.reason) == ("forged", None, "MAC mismatch")
    assert verifier._devices[topic_for("pump-1")].ciphers is None  # no cipher was ever made for it


def test_a_status_message_with_the_encrypted_bit_is_malformed(keys):
    config = keys.provision("pump-1", "wifi", encrypt=True)
    sealer = sealer_for(config, 1, ecb_block)
    data = bytearray(sealer.seal_status(status_payload(BIRTH, sealer, 0, 0)))
    data[0] |= wire.FLAG_ENCRYPTED
    tag_at = len(data) - 4 - 16
    prefix = wire.mac_prefix("pump-1", wire.STATUS_DOMAIN)
    data[tag_at:-4] = hmac.digest(bytes.fromhex(config["key"]), prefix + bytes(data[:tag_at]), "sha256")[:16]
    data[-4:] = wire.crc_trailer(bytes(data[:-4]))
    verdict = Verifier(keys.device_keys(), names()).verify_status(status_topic_for("pump-1"), bytes(data), 1.0)
    assert verdict.outcome == "malformed" and "never encrypted" in verdict.reason


def test_records_in_clear_are_refused_where_encryption_is_required_and_their_positions_are_not_loss(keys):
    clear = sealer_for(keys.provision("monitor-1", "wifi"), 1, ecb_block)  # on a link that requires it
    lapsed = sealer_for(dict(keys.provision("pump-1", "ble", encrypt=True), encrypt=False), 1, ecb_block)
    sealed = sealer_for(keys.provision("pump-2", "wifi", encrypt=True), 1, ecb_block)
    plain_ble = sealer_for(keys.provision("oxi-1", "ble"), 1, ecb_block)  # ble does not require it
    verifier = Verifier(keys.device_keys(), names(), require_encryption=["wifi"])
    outcomes = {}
    for device, sealer in (("monitor-1", clear), ("pump-1", lapsed), ("pump-2", sealed), ("oxi-1", plain_ble)):
        outcomes[device] = [verifier.verify(topic_for(device), sealer.seal(b"r%d" % i), 1.0) for i in range(5)]
    assert {v.outcome for v in outcomes["monitor-1"]} == {"unencrypted"}
    assert {v.payload for v in outcomes["monitor-1"]} == {None}
    assert "requires encryption" in outcomes["monitor-1"][0].reason
    assert {v.outcome for v in outcomes["pump-1"]} == {"unencrypted"}
    assert "provisioned to encrypt" in outcomes["pump-1"][0].reason
    assert [v.payload for v in outcomes["pump-2"]] == [b"r%d" % i for i in range(5)]
    assert {v.outcome for v in outcomes["oxi-1"]} == {"valid"}
    from hub.core.report import build_report

    report = build_report(verifier)
    assert report["devices"]["monitor-1"]["unencrypted"] == 5 and report["devices"]["monitor-1"]["lost"] == 0
    assert report["links"]["wifi"]["unencrypted"] == 5 and report["links"]["wifi"]["valid"] == 5
    assert report["links"]["ble"]["unencrypted"] == 5 and report["links"]["ble"]["valid"] == 5


def test_a_birth_for_an_epoch_already_born_is_epoch_reuse_and_a_copy_of_one_is_a_replay(keys):
    config = keys.provision("pump-1", "wifi", encrypt=True)
    verifier = Verifier(keys.device_keys(), names())
    topic = status_topic_for("pump-1")

    def boot(epoch, queued):
        sealer = sealer_for(config, epoch, ecb_block)
        sealer.seal_status(status_payload("death", sealer, 0, 0))  # the will, sealed first at connect
        return sealer.seal_status(status_payload(BIRTH, sealer, queued, 0, reset_cause="power_on"))

    first, second = boot(1, 0), boot(2, 0)
    assert verifier.verify_status(topic, first, 1.0).outcome == "valid"
    assert verifier.verify_status(topic, second, 2.0).outcome == "valid"
    assert verifier.verify_status(topic, second, 3.0).outcome == "replay"  # a copy: not a reused epoch
    restored = boot(2, 3)  # epoch store rolled back: epoch 2 again, a different birth
    assert verifier.verify_status(topic, restored, 4.0).outcome == "replay"
    assert verifier.verify_status(topic, boot(1, 5), 5.0).outcome == "replay"  # further back
    events = [e for e in verifier.events if e["kind"] == "epoch_reuse"]
    assert [(e["device"], e["t"]) for e in events] == [("pump-1", 4.0), ("pump-1", 5.0)]
    from hub.core.report import build_report

    assert build_report(verifier)["devices"]["pump-1"]["epoch_reuse"] == 2


def test_provision_records_encryption_rotate_keeps_it_and_the_build_refuses_a_board_without_cryptolib(tmp_path):
    keys = tmp_path / "hub.keys"

    def linkseal(*args):
        return subprocess.run([str(LINKSEAL), *map(str, args)], capture_output=True, text=True, timeout=300)

    assert linkseal("keys", "init", "--out", keys, "--insecure-plaintext").returncode == 0
    done = linkseal("keys", "provision", "pump-1", "--keys", keys, "--insecure-plaintext", "--link", "wifi",
                    "--encrypt", "--out", tmp_path / "pump-1.json")
    assert done.returncode == 0 and "records encrypted" in done.stdout
    assert json.loads((tmp_path / "pump-1.json").read_text())["encrypt"] is True
    rotated = linkseal("keys", "rotate", "pump-1", "--keys", keys, "--insecure-plaintext",
                       "--out", tmp_path / "pump-1b.json")
    assert rotated.returncode == 0, rotated.stderr
    assert json.loads((tmp_path / "pump-1b.json").read_text())["encrypt"] is True
    assert linkseal("keys", "provision", "oxi-1", "--keys", keys, "--insecure-plaintext", "--link", "ble",
                    "--out", tmp_path / "oxi-1.json").returncode == 0

    own_board = tmp_path / "plain-board.toml"
    text = (BOARDS_DIR / "esp32.toml").read_text()
    own_board.write_text(text.replace('name = "esp32"', 'name = "plain-board"').replace("cryptolib = true",
                                                                                      "cryptolib = false"))
    common = ("firmware", "build", "--broker", "mqtt://127.0.0.1:1883", "--encrypt")
    refused = linkseal(*common, "--device", tmp_path / "pump-1b.json", "--board", own_board, "--out", tmp_path / "b1")
    assert refused.returncode == 2 and "has no cryptolib" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "b1").exists()
    clear = linkseal(*common, "--device", tmp_path / "oxi-1.json", "--board", "esp32", "--transport", "mqtt",
                     "--out", tmp_path / "b2")
    assert clear.returncode == 2 and "provisioned to send records in clear" in clear.stderr
    built = linkseal(*common, "--device", tmp_path / "pump-1b.json", "--board", "esp32", "--out", tmp_path / "b3")
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "b3" / "lib" / "agent" / "cipher.mpy").exists()
    assert "cipher.py" in (tmp_path / "b3" / "manifest.py").read_text()
    plain = linkseal("firmware", "build", "--broker", "mqtt://127.0.0.1:1883", "--device", tmp_path / "oxi-1.json",
                     "--board", "esp32", "--transport", "mqtt", "--out", tmp_path / "b4")
    assert plain.returncode == 0 and not (tmp_path / "b4" / "lib" / "agent" / "cipher.mpy").exists()


def test_a_policy_naming_an_unknown_link_is_refused(tmp_path):
    from hardware.link_registry import load_links
    from hub.service.config import ConfigError, load_settings

    config = tmp_path / "hub.toml"
    config.write_text('[policy]\nrequire_encryption = ["wifi", "zigbee"]\n')
    with pytest.raises(ConfigError, match="zigbee.*not a link type"):
        load_settings(config, load_links())
    config.write_text('[policy]\nrequire_encryption = ["wifi", "ble", "lora"]\n')
    assert load_settings(config, load_links()).require_encryption == ["wifi", "ble", "lora"]


# -- end to end -------------------------------------------------------------------------------

def pg_payloads(postgres, device) -> list:
    if postgres.query("SELECT to_regclass('linkseal_records')")[0][0] is None:
        return []
    return [bytes(p) for (p,) in postgres.query(
        "SELECT payload FROM linkseal_records WHERE device = %s ORDER BY epoch, seq", (device,))]


def encrypting_hub(tmp_path, broker, keys, postgres):
    config = tmp_path / "hub.toml"
    config.write_text('[rate_limits]\ndefault = { rate = 100000, burst = 100000 }\n'
                      '[policy]\nrequire_encryption = ["wifi"]\n')
    hub = HubProcess(broker, keys.path, tmp_path / "hub.db", tmp_path / "hub.log", "--config", config,
                     "--forward", postgres.url).start()
    hub.wait_connected()
    return hub


def test_the_linux_agent_encrypts_end_to_end_to_the_postgres_sink_and_clear_records_are_refused(
        tmp_path, broker, keys, postgres):
    readings = [f"patient 17 hr {60 + i % 40} spo2 {90 + i % 9}" for i in range(200)]
    source = tmp_path / "readings.log"
    source.write_text("".join(line + "\n" for line in readings))
    write_private_json(tmp_path / "pump-1.json", keys.provision("pump-1", "wifi", encrypt=True))
    write_private_json(tmp_path / "monitor-1.json", keys.provision("monitor-1", "wifi"))  # in clear
    hub = encrypting_hub(tmp_path, broker, keys, postgres)
    wire_copies = Subscriber(broker.port, "linkseal/v1/#")
    try:
        for device in ("pump-1", "monitor-1"):
            agent = subprocess.run([str(LINKSEAL), "agent", "run", "--config", str(tmp_path / f"{device}.json"),
                                    "--broker", broker.url, "--source", str(source), "--state-dir",
                                    str(tmp_path / device), "--max-rate", "0"], capture_output=True, text=True,
                                   timeout=300)
            assert agent.returncode == 0, agent.stderr
        wait_for(lambda: len(pg_payloads(postgres, "pump-1")) == len(readings), 60, "every record in PostgreSQL")
        wait_for(lambda: stored_report(hub.db)["devices"].get("monitor-1", {}).get("unencrypted") == len(readings),
                 60, "the clear records refused")
    finally:
        hub.stop()
        wire_copies.close()
    assert pg_payloads(postgres, "pump-1") == [line.encode() for line in readings]
    assert pg_payloads(postgres, "monitor-1") == []  # refused: never stored, never forwarded
    copies = [payload for topic, payload in wire_copies.received() if topic == topic_for("pump-1")]
    assert len(copies) >= len(readings)
    assert not any(line.encode() in copy for copy in copies for line in readings[:20])
    report = stored_report(hub.db)
    assert report["devices"]["pump-1"]["valid"] == len(readings) and report["devices"]["pump-1"]["lost"] == 0
    assert report["devices"]["monitor-1"]["lost"] == 0 and report["devices"]["monitor-1"]["valid"] == 0
    log = hub.log.read_text()
    assert "patient 17" not in log and keys.provision("pump-1", "wifi", save=False)["key"] not in log


FIRMWARE_RECORDS = """# The test's record source: 40 known readings, then none.
_n = 0


def read():
    global _n
    if _n >= 40:
        return None
    _n += 1
    return b"bed 7 temp 36.%d C" % _n
"""


def test_the_firmware_on_micropythons_unix_port_encrypts_end_to_end_and_a_rolled_back_epoch_is_reported(
        tmp_path, broker, keys, postgres):
    write_private_json(tmp_path / "bed-7.json", keys.provision("bed-7", "wifi", encrypt=True))
    settings = agent_settings(parse_broker(broker.url), board("esp32"), record_interval_ms=20)
    build(tmp_path / "bed-7.json", board("esp32"), tmp_path / "build", settings)
    flash = tmp_path / "flash"
    shutil.copytree(tmp_path / "build", flash)
    install_umqtt(flash)
    (flash / "records.py").write_text(FIRMWARE_RECORDS)  # next to main.py: it wins over lib/records.mpy
    expected = [b"bed 7 temp 36.%d C" % n for n in range(1, 41)]
    hub = encrypting_hub(tmp_path, broker, keys, postgres)
    wire_copies = Subscriber(broker.port, "linkseal/v1/#")

    def run_board(until, what):
        console = open(tmp_path / "console.log", "a")
        board_process = subprocess.Popen([str(micropython_unix()), "-c", "import app\napp.main()"], cwd=flash,
                                         env={"MICROPYPATH": f":{flash / 'lib'}", "PATH": "/usr/bin:/bin"},
                                         stdout=console, stderr=subprocess.STDOUT)
        try:
            wait_for(until, 90, what)
        finally:
            board_process.terminate()
            board_process.wait(10)
            console.close()

    try:
        run_board(lambda: len(pg_payloads(postgres, "bed-7")) == 40, "the board's records in PostgreSQL")
        epoch_before = (flash / "epoch").read_text()
        run_board(lambda: len(pg_payloads(postgres, "bed-7")) == 80, "the second boot's records")
        # The epoch store rolled back (a flash image restored): the next boot uses epoch 2 again.
        (flash / "epoch").write_text(epoch_before)
        run_board(lambda: "epoch_reuse" in [e["kind"] for e in stored_report(hub.db)["events"]],
                  "the hub to report the reused epoch")
    finally:
        hub.stop()
        wire_copies.close()
    assert pg_payloads(postgres, "bed-7") == expected * 2  # epochs 1 and 2, decrypted
    copies = [payload for topic, payload in wire_copies.received() if topic == topic_for("bed-7")]
    assert copies and not any(b"temp 36" in copy for copy in copies)
    device = stored_report(hub.db)["devices"]["bed-7"]
    assert device["epoch_reuse"] == 1 and device["forged"] == 0 and device["unencrypted"] == 0
