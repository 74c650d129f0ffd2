"""The agent core on CPython: argument checks, sequencing, the codec's edges."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import Sealer, check_device_id, topic_for
from agent import frame as wire
from agent.link_codes import LINKS

from .conftest import KEY


@pytest.mark.parametrize("device_id", ["", "a/b", "a+b", "a#b", "a b", "x" * 65, "caf\u00e9", "$SYS"])
def test_bad_device_ids_are_refused(device_id):
    with pytest.raises(ValueError, match="device id"):
        Sealer(device_id, KEY)
    with pytest.raises(ValueError):
        topic_for(device_id)


def test_good_device_ids_and_topic():
    for device_id in ("pump-1", "ICU.bed_07:spo2", "x" * 64):
        check_device_id(device_id)
    assert topic_for("pump-1") == "linkseal/v1/pump-1/rec"


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="at least 16 bytes"):
        Sealer("d", b"k" * 15)
    with pytest.raises(ValueError, match="unknown link 'token-ring'"):
        Sealer("d", KEY, link="token-ring")
    with pytest.raises(ValueError, match="tag length"):
        Sealer("d", KEY, tag_len=12)
    with pytest.raises(ValueError, match="key id"):
        Sealer("d", KEY, key_id=256)
    with pytest.raises(ValueError, match="epoch"):
        Sealer("d", KEY, epoch=-1)


def test_payload_limit_per_link_and_no_sequence_spent_on_refusal():
    for link, (_, limit) in LINKS.items():
        sealer = Sealer("d", KEY, link=link)
        sealer.seal(b"x" * limit)
        with pytest.raises(ValueError, match=f"over the {link} limit of {limit}"):
            sealer.seal(b"x" * (limit + 1))
        assert sealer.seq == 1


def test_sequence_and_epoch_rollover():
    sealer = Sealer("d", KEY, epoch=7)
    assert (sealer.epoch, sealer.seq) == (7, 0)
    sealer.seal(b"")
    assert (sealer.epoch, sealer.seq) == (7, 1)
    sealer.seq = wire.MAX_COUNTER
    assert wire.decode(sealer.seal(b""))[2:4] == (7, wire.MAX_COUNTER)
    # The epoch advances before the sequence number could wrap.
    assert wire.decode(sealer.seal(b""))[2:4] == (8, 0)
    assert (sealer.epoch, sealer.seq) == (8, 1)
    sealer.epoch, sealer.seq = wire.MAX_COUNTER, wire.MAX_COUNTER + 1
    with pytest.raises(ValueError, match="exhausted"):
        sealer.seal(b"")


@given(st.integers(0, 2**53 - 1))
def test_varint_round_trip_and_length(value):
    out = bytearray()
    wire.put_varint(out, value)
    assert wire.get_varint(out, 0, len(out), 2**53 - 1) == (value, len(out))
    assert len(out) == max(1, (value.bit_length() + 6) // 7)


@pytest.mark.parametrize("encoded,limit", [(b"\x80\x00", 2**32), (b"\xff\xff\xff\xff\x10", 2**32 - 1),
                                           (b"\x80", 2**32), (b"\x80" * 9 + b"\x01", 2**63)])
def test_varint_rejects_long_forms_overflow_and_truncation(encoded, limit):
    with pytest.raises(wire.MalformedFrame):
        wire.get_varint(encoded, 0, len(encoded), limit)


def test_decode_separates_damage_from_structure():
    frame = Sealer("d", KEY).seal(b"abc")
    with pytest.raises(wire.CorruptFrame):
        wire.decode(frame[:-1])
    with pytest.raises(wire.CorruptFrame):
        wire.decode(b"\x00\x01")
    body = b"\x31" + frame[1:-4]  # version 3
    with pytest.raises(wire.MalformedFrame, match="version 3"):
        wire.decode(body + wire.struct.pack(">I", wire.crc32(body)))


def test_overhead_is_within_the_issue_bounds():
    for tag_len, bound in ((8, 20), (16, 28), (32, 44)):
        sealer = Sealer("d", KEY, tag_len=tag_len, epoch=2**14 - 1)
        sealer.seq = 2**21 - 1
        assert len(sealer.seal(b"p" * 10)) - 10 <= bound
