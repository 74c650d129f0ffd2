"""The frozen v1 vectors, checked on CPython here (test_micropython.py checks the device side)."""

import hmac
import struct

import crcmod.predefined
import pytest

from agent import Sealer, topic_for
from agent import frame as wire
from hub.core.verifier import DeviceKeys, Verifier
from hub.keys.keyfile import derive_device_key

from .conftest import link_names, load_vectors

FRAMES = load_vectors("frames")


@pytest.mark.parametrize("vector", FRAMES, ids=[v["name"] for v in FRAMES])
def test_sealer_reproduces_vector(vector):
    sealer = Sealer(vector["device_id"], bytes.fromhex(vector["key"]), key_id=vector["key_id"],
                    link=vector["link"], epoch=vector["epoch"], tag_len=vector["tag_len"])
    sealer.seq = vector["seq"]
    assert sealer.seal(bytes.fromhex(vector["payload"]), vector["timestamp_ms"]).hex() == vector["frame"]


@pytest.mark.parametrize("vector", FRAMES, ids=[v["name"] for v in FRAMES])
def test_vector_tag_and_crc_by_independent_implementations(vector):
    # The tag with the standard library's HMAC, the CRC with crcmod's CRC-32 definition.
    data = bytes.fromhex(vector["frame"])
    tag_len = vector["tag_len"]
    body, tag, crc = data[: -tag_len - 4], data[-tag_len - 4 : -4], data[-4:]
    device = vector["device_id"].encode()
    msg = b"linkseal/v1 frame\x00" + bytes([len(device)]) + device + body
    assert hmac.new(bytes.fromhex(vector["key"]), msg, "sha256").digest()[:tag_len] == tag
    crc32 = crcmod.predefined.mkCrcFun("crc-32")
    assert struct.pack(">I", crc32(data[:-4])) == crc


@pytest.mark.parametrize("vector", FRAMES, ids=[v["name"] for v in FRAMES])
def test_vector_verifies_with_its_fields(vector):
    verifier = Verifier([DeviceKeys(vector["device_id"], {vector["key_id"]: bytes.fromhex(vector["key"])},
                                    vector["link"], vector["tag_len"])], link_names())
    verdict = verifier.verify(topic_for(vector["device_id"]), bytes.fromhex(vector["frame"]), 0.0)
    assert verdict.outcome == "valid"
    assert (verdict.link, verdict.epoch, verdict.seq, verdict.device_time_ms) == (
        vector["link"], vector["epoch"], vector["seq"], vector["timestamp_ms"])
    assert verdict.payload == bytes.fromhex(vector["payload"])


def test_overhead_bounds_from_the_issue():
    # epoch < 2^14 and seq < 2^21: <= 20 bytes with an 8-byte tag, <= 28 with a 16-byte tag.
    by_name = {v["name"]: v for v in FRAMES}
    for name, bound in (("overhead bound, 8-byte tag", 20), ("overhead bound, 16-byte tag", 28)):
        v = by_name[name]
        overhead = len(bytes.fromhex(v["frame"])) - len(bytes.fromhex(v["payload"]))
        assert overhead <= bound, f"{name}: {overhead} bytes"


OUTCOMES = load_vectors("outcomes")


def test_outcome_vectors_in_order():
    devices = [DeviceKeys(d["device_id"], {d["key_id"]: bytes.fromhex(d["key"])}, d["link"], d["min_tag_len"])
               for d in OUTCOMES["devices"]]
    verifier = Verifier(devices, link_names())
    got = [(case["name"], verifier.verify(case["topic"], bytes.fromhex(case["frame"]), 0.0).outcome)
           for case in OUTCOMES["frames"]]
    assert got == [(case["name"], case["outcome"]) for case in OUTCOMES["frames"]]


@pytest.mark.parametrize("vector", load_vectors("keys"))
def test_hkdf_key_vectors(vector):
    key = derive_device_key(bytes.fromhex(vector["master_secret"]), vector["device_id"], vector["key_id"])
    assert key.hex() == vector["key"]


def test_decode_reads_vector_fields():
    for v in FRAMES:
        key_id, link, epoch, seq, stamp, start, tag_at, tag_len = wire.decode(bytes.fromhex(v["frame"]))
        assert (key_id, epoch, seq, stamp, tag_len) == (v["key_id"], v["epoch"], v["seq"], v["timestamp_ms"],
                                                         v["tag_len"])
        assert bytes.fromhex(v["frame"])[start:tag_at] == bytes.fromhex(v["payload"])
