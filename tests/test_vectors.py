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


COMPACT = load_vectors("compact")


def _compact_sealer(vector):
    return Sealer(vector["device_id"], bytes.fromhex(vector["key"]), key_id=vector["key_id"], link=vector["link"],
                  epoch=vector["epoch"], tag_len=vector["tag_len"], compact=True)


@pytest.mark.parametrize("vector", COMPACT, ids=[v["name"] for v in COMPACT])
def test_compact_vectors_seal_and_tag_by_an_independent_implementation(vector):
    sealer = _compact_sealer(vector)
    payload = bytes.fromhex(vector["payload"])
    if vector["status"]:
        assert sealer.seal_status(payload).hex() == vector["frame"]
    else:
        sealer.seq = vector["seq"]
        assert sealer.seal(payload, vector["timestamp_ms"]).hex() == vector["frame"]
    # The tag with the standard library's HMAC over the compact domain; nothing follows it.
    data = bytes.fromhex(vector["frame"])
    body, tag = data[: -vector["tag_len"]], data[-vector["tag_len"]:]
    domain = b"linkseal/v1 compact status\x00" if vector["status"] else b"linkseal/v1 compact frame\x00"
    device = vector["device_id"].encode()
    assert hmac.new(bytes.fromhex(vector["key"]), domain + bytes([len(device)]) + device + body,
                    "sha256").digest()[: vector["tag_len"]] == tag
    assert data[0] & wire.FLAG_COMPACT and data[1] == vector["key_id"]  # no link code after the key id


@pytest.mark.parametrize("vector", [v for v in COMPACT if not v["status"]], ids=lambda v: v["name"])
def test_compact_vector_verifies_with_its_fields(vector):
    verifier = Verifier([DeviceKeys(vector["device_id"], {vector["key_id"]: bytes.fromhex(vector["key"])},
                                    vector["link"], vector["tag_len"], compact=True)], link_names())
    verdict = verifier.verify(topic_for(vector["device_id"]), bytes.fromhex(vector["frame"]), 0.0)
    assert (verdict.outcome, verdict.link, verdict.epoch, verdict.seq, verdict.device_time_ms) == (
        "valid", vector["link"], vector["epoch"], vector["seq"], vector["timestamp_ms"])
    assert verdict.payload == bytes.fromhex(vector["payload"])


def test_compact_overhead_bound_from_the_issue():
    """8-byte tag, epoch < 128, seq < 16,384: at most 13 bytes, so a 51-byte uplink carries 38."""
    by_name = {v["name"]: v for v in COMPACT}
    for name in ("compact overhead bound, 8-byte tag", "compact, 38 bytes in a 51-byte uplink"):
        v = by_name[name]
        assert len(bytes.fromhex(v["frame"])) - len(bytes.fromhex(v["payload"])) <= 13, name
    assert len(bytes.fromhex(by_name["compact, 38 bytes in a 51-byte uplink"]["frame"])) == 51


def test_neither_form_passes_for_the_other():
    """The form is bound into the MAC (flag and domain): a compact frame made to look full, or
    the reverse, never verifies; a full frame from a compact device is malformed."""
    key = bytes(range(32))
    compact = Sealer("sensor-9", key, link="lora", epoch=1, tag_len=8, compact=True)
    full = Sealer("sensor-9", key, link="lora", epoch=1, tag_len=8)
    compact_frame, full_frame = compact.seal(b"x"), full.seal(b"x")
    as_compact = Verifier([DeviceKeys("sensor-9", {0: key}, "lora", 8, compact=True)], link_names())
    as_full = Verifier([DeviceKeys("sensor-9", {0: key}, "lora", 8)], link_names())
    topic = topic_for("sensor-9")
    assert as_compact.verify(topic, full_frame, 0.0).outcome == "malformed"
    assert as_full.verify(topic, compact_frame, 0.0).outcome == "corrupt"  # no CRC where the full form has one
    # The full frame's header rewritten as compact (flag set, link code and CRC cut): the MAC fails.
    rewritten = bytes([full_frame[0] | wire.FLAG_COMPACT, full_frame[1]]) + full_frame[3:-4]
    assert as_compact.verify(topic, rewritten, 0.0).outcome == "forged"
    # On the compact path damage is a forgery: the link's own check should have dropped it.
    damaged = bytearray(compact_frame)
    damaged[-1] ^= 1
    assert as_compact.verify(topic, bytes(damaged), 0.0).outcome == "forged"
    assert as_compact.verify(topic, compact_frame, 0.0).outcome == "valid"
