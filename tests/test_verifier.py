"""The hub verifier core: outcomes, windows, epochs and counters against hand-computed truth."""


import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import Sealer, topic_for
from agent import frame as wire
from hub.core.report import build_report
from hub.core.verifier import RETAINED_EPOCHS, Verdict
from hub.core.window import WINDOW

from .conftest import KEY, make_verifier

TOPIC = topic_for("pump-1")


def sealed(n, epoch=1, payload=b"r", **kwargs):
    sealer = Sealer("pump-1", KEY, link=kwargs.pop("link", "wifi"), epoch=epoch, **kwargs)
    return [sealer.seal(payload + bytes([i % 256])) for i in range(n)]


def outcomes(verifier, frames, topic=TOPIC):
    return [verifier.verify(topic, f, 0.0).outcome for f in frames]


def device(verifier, name="pump-1"):
    return build_report(verifier)["devices"][name]


def reseal_crc(body: bytes) -> bytes:
    return body + wire.crc_trailer(body)


def test_round_trip_gives_the_record(verifier):
    frame = Sealer("pump-1", KEY, link="ble", epoch=3).seal(b"spo2=97", 1795000000000)
    verdict = verifier.verify(TOPIC, frame, 12.5)
    assert isinstance(verdict, Verdict)
    assert verdict == ("valid", "pump-1", "ble", 3, 0, 1795000000000, b"spo2=97", "")


@pytest.mark.parametrize("tag_len", [8, 16, 32])
def test_every_single_bit_flip_is_corrupt(tag_len):
    verifier = make_verifier(("pump-1", KEY, "wifi", 8))
    for original in sealed(3, payload=b"x" * 5, tag_len=tag_len):
        for bit in range(len(original) * 8):
            damaged = bytearray(original)
            damaged[bit // 8] ^= 1 << (bit % 8)
            assert verifier.verify(TOPIC, bytes(damaged), 0.0).outcome == "corrupt", bit
    assert device(verifier)["valid"] == 0


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=64), position=st.integers(min_value=0), delta=st.integers(1, 255))
def test_tampering_with_a_recomputed_crc_is_forged(payload, position, delta):
    verifier = make_verifier()
    body = bytearray(Sealer("pump-1", KEY).seal(payload)[:-4])
    body[position % len(body)] ^= delta
    outcome = verifier.verify(TOPIC, reseal_crc(bytes(body)), 0.0).outcome
    # A changed header byte can also break the structure; it is never accepted.
    assert outcome in ("forged", "malformed")
    if position % len(body) >= 5:  # past the fixed header and the one-byte epoch and seq
        assert outcome == "forged"


def test_truncation_and_extension():
    verifier = make_verifier()
    frame = sealed(1)[0]
    assert outcomes(verifier, [frame[:-1], frame[:3], b"", frame + b"\x00"]) == ["corrupt"] * 4
    # Cut at the tag and CRC made good: the structure still parses, the MAC cannot match.
    assert outcomes(verifier, [reseal_crc(frame[:-5]), reseal_crc(frame[:-4] + b"\x00")]) == ["forged"] * 2
    assert outcomes(verifier, [frame]) == ["valid"]


def test_frame_on_another_devices_topic_is_forged():
    verifier = make_verifier(("pump-1", KEY, "wifi", 16), ("pump-2", KEY, "wifi", 16))
    frame = sealed(1)[0]
    # Even with the same key, the device id under the MAC differs.
    assert verifier.verify(topic_for("pump-2"), frame, 0.0).outcome == "forged"
    assert verifier.verify(TOPIC, frame, 0.0).outcome == "valid"


def test_unknown_key_id_and_tag_downgrade_are_forged(verifier):
    wrong_id = Sealer("pump-1", KEY, key_id=1).seal(b"a")
    downgraded = Sealer("pump-1", KEY, tag_len=8).seal(b"a")  # a genuine MAC, but short
    verdicts = [verifier.verify(TOPIC, f, 0.0) for f in (wrong_id, downgraded)]
    assert [v.outcome for v in verdicts] == ["forged", "forged"]
    assert "key id 1" in verdicts[0].reason and "below the device minimum" in verdicts[1].reason
    # Neither touched the window: the same sequence number is still new.
    assert outcomes(verifier, sealed(1)) == ["valid"]


def test_longer_tag_than_the_minimum_is_accepted(verifier):
    assert outcomes(verifier, [Sealer("pump-1", KEY, tag_len=32).seal(b"a")]) == ["valid"]


def test_malformed_structure_with_intact_crc(verifier):
    frame = sealed(1)[0]
    cases = [
        bytes([0x21]) + frame[1:-4],  # version 2
        bytes([0x13]) + frame[1:-4],  # reserved tag length code
        bytes([0x19]) + frame[1:-4],  # the compact flag, from a device of the full form
        frame[:2] + bytes([200]) + frame[3:-4],  # link code not in the registry
        frame[:3] + b"\x80\x00" + frame[4:-4],  # epoch varint not in shortest form
        b"\x11\x00\x04",  # a header and nothing else
    ]
    assert outcomes(verifier, [reseal_crc(body) for body in cases]) == ["malformed"] * len(cases)
    assert device(verifier)["malformed"] == len(cases)


def test_unknown_device_creates_no_state(verifier):
    frame = sealed(1)[0]
    results = [verifier.verify(t, frame, 0.0) for t in ("linkseal/v1/ghost/rec", "elsewhere/topic", "")]
    assert [r.outcome for r in results] == ["unknown_device"] * 3
    assert [r.device_id for r in results] == ["ghost", None, None]
    report = build_report(verifier)
    assert report["unknown_device"] == 3 and report["devices"] == {} and report["links"] == {}
    assert [e["kind"] for e in report["events"]] == ["unknown_device"] * 3


def test_duplicate_inside_and_replay_outside_the_window(verifier):
    frames = sealed(WINDOW + 10)
    assert set(outcomes(verifier, frames)) == {"valid"}
    top = WINDOW + 9
    inside = frames[top - WINDOW + 1]  # the oldest sequence number still in the window
    outside = frames[top - WINDOW]
    assert outcomes(verifier, [inside, frames[top], outside, frames[0]]) == [
        "duplicate", "duplicate", "replay", "replay"]
    counts = device(verifier)
    assert (counts["valid"], counts["duplicate"], counts["replay"]) == (WINDOW + 10, 2, 2)
    assert [e["kind"] for e in build_report(verifier)["events"]] == ["replay", "replay"]


def test_reordering_inside_the_window_is_accepted_once(verifier):
    frames = sealed(WINDOW + 1)
    # Hold back seq 0 (the first frame) until the window is exactly full of later ones.
    assert set(outcomes(verifier, frames[1:])) == {"valid"}
    assert outcomes(verifier, [frames[0]]) == ["replay"]  # seq 0 is WINDOW behind: outside
    verifier = make_verifier()
    order = [0, 5, 1, 2, 4, 3, 6]
    assert outcomes(verifier, [frames[i] for i in order]) == ["valid"] * 7
    counts = device(verifier)
    assert (counts["valid"], counts["lost"], counts["reordered"]) == (7, 0, 4)


def test_a_broker_redelivery_is_neither_reordering_nor_a_link_duplicate(verifier):
    """Frames 0, 1, 3 arrive; 2 comes last only because the broker redelivered it (DUP flag),
    then the broker delivers 3 again: the link figures equal those of an in-order stream."""
    frames = sealed(4)
    for i in (0, 1, 3):
        verifier.verify(TOPIC, frames[i], 1.0)
    assert verifier.verify(TOPIC, frames[2], 2.0, redelivered=True).outcome == "valid"
    again = verifier.verify(TOPIC, frames[3], 2.0, redelivered=True)
    assert (again.outcome, again.payload) == ("redelivered", None)
    in_order = make_verifier()
    for frame in frames:
        in_order.verify(TOPIC, frame, 1.0)
    got, want = device(verifier), device(in_order)
    assert got["redelivered"] == 2 and want["redelivered"] == 0
    assert {k: v for k, v in got.items() if k != "redelivered"} == {k: v for k, v in want.items() if k != "redelivered"}
    assert verifier.verify(TOPIC, frames[3], 3.0).outcome == "duplicate"  # without DUP: the link's duplicate


def test_hand_computed_counters():
    verifier = make_verifier()
    frames = sealed(12)
    damaged = bytearray(frames[9])
    damaged[4] ^= 0x40
    # seq:        0  1  3  4  2(late) 4(dup) 7  8  9(damaged) 11
    delivered = [frames[i] for i in (0, 1, 3, 4, 2, 4, 7, 8)] + [bytes(damaged), frames[11]]
    assert outcomes(verifier, delivered) == (["valid"] * 5 + ["duplicate", "valid", "valid", "corrupt", "valid"])
    counts = device(verifier)
    # expected 0..11 = 12; valid 0,1,2,3,4,7,8,11 = 8; lost 5,6,9,10 = 4 (9 also counted corrupt)
    assert {k: counts[k] for k in ("received", "valid", "lost", "duplicate", "reordered", "corrupt",
                                   "forged", "replay", "malformed")} == {
        "received": 10, "valid": 8, "lost": 4, "duplicate": 1, "reordered": 1, "corrupt": 1,
        "forged": 0, "replay": 0, "malformed": 0}
    # Pattern R R R R R L L R R L L R: runs of loss 2 and 2, R->L twice over 8 received, L->R twice over 4 lost.
    assert counts["burst_mean"] == 2.0
    assert counts["ge_p"] == 2 / 8 and counts["ge_r"] == 2 / 4
    assert counts["loss_rate"] == 4 / 12 and counts["corrupt_rate"] == 1 / 10
    assert build_report(verifier)["links"]["wifi"]["lost"] == 4


def test_new_epoch_counts_from_zero_and_old_epoch_flush_counts_once(verifier):
    old = sealed(10, epoch=5)
    new = sealed(6, epoch=6)
    # Epoch 5: 0..6 delivered, 7..9 buffered on the device. Reboot: epoch 6 loses seq 0 and 1.
    results = outcomes(verifier, old[:7] + new[2:])
    results += outcomes(verifier, old[7:])  # the flush after reboot
    results += outcomes(verifier, old[7:] + new[2:3])  # and a second flush of the same frames
    assert results == ["valid"] * 14 + ["duplicate"] * 4
    counts = device(verifier)
    assert (counts["valid"], counts["lost"], counts["duplicate"]) == (14, 2, 4)


def test_device_first_seen_mid_epoch_counts_from_first_frame(verifier):
    frames = sealed(110)
    assert outcomes(verifier, frames[100:]) == ["valid"] * 10
    assert device(verifier)["lost"] == 0
    # An earlier frame arriving late moves the start back: 98 and 99 become lost.
    assert outcomes(verifier, [frames[97]]) == ["valid"]
    counts = device(verifier)
    assert (counts["lost"], counts["reordered"]) == (2, 1)


def test_retired_epochs_are_replays(verifier):
    first = sealed(3, epoch=1)
    assert outcomes(verifier, first[:1]) == ["valid"]
    latest = 1 + RETAINED_EPOCHS
    assert outcomes(verifier, sealed(1, epoch=latest)) == ["valid"]
    # Epoch 1 is now RETAINED_EPOCHS behind: retired, even for a frame never seen.
    verdict = verifier.verify(TOPIC, first[1], 0.0)
    assert (verdict.outcome, verdict.reason) == ("replay", "epoch 1 is retired")
    # The epoch just inside the retained range still accepts its buffered frames.
    assert outcomes(verifier, sealed(2, epoch=latest - RETAINED_EPOCHS + 1)) == ["valid", "valid"]


def test_unauthenticated_frames_charge_the_devices_current_link():
    verifier = make_verifier(("pump-1", KEY, "wifi", 16))
    assert outcomes(verifier, sealed(2, link="cellular")) == ["valid", "valid"]
    damaged = bytearray(sealed(3, link="cellular")[2])
    damaged[0] ^= 0x80
    assert outcomes(verifier, [bytes(damaged)]) == ["corrupt"]
    report = build_report(verifier)
    assert report["devices"]["pump-1"]["link"] == "cellular"
    assert report["links"]["cellular"]["corrupt"] == 1 and "wifi" not in report["links"]


def test_gap_is_charged_to_the_link_that_reveals_it():
    verifier = make_verifier()
    wifi = sealed(5, link="wifi")
    ble = sealed(10, link="ble")
    assert outcomes(verifier, wifi[:2] + ble[5:6]) == ["valid"] * 3
    links = build_report(verifier)["links"]
    assert (links["wifi"]["lost"], links["ble"]["lost"]) == (0, 3)
    # A late wifi frame fills one of the holes the ble frame revealed: ble's debt shrinks.
    assert outcomes(verifier, wifi[3:4]) == ["valid"]
    links = build_report(verifier)["links"]
    assert (links["wifi"]["lost"], links["ble"]["lost"]) == (0, 2)


def test_events_carry_no_key_material(verifier):
    verifier.verify(TOPIC, reseal_crc(sealed(1)[0][:-6]), 1.0)
    verifier.verify("linkseal/v1/ghost/rec", b"\x00" * 40, 2.0)
    text = repr(build_report(verifier)) + repr(verifier.__dict__)
    assert KEY.hex() not in text and repr(KEY) not in text
    assert {e["kind"] for e in verifier.events} == {"forged", "unknown_device"}
    assert set(verifier.events[0]) == {"t", "device", "link", "kind", "reason"}


def test_key_rotation_accepts_each_registered_key_id_once():
    from hub.core.verifier import DeviceKeys, Verifier

    from .conftest import link_names

    new_key = bytes(range(0x40, 0x60))
    verifier = Verifier([DeviceKeys("pump-1", {0: KEY, 1: new_key}, "wifi", 16)], link_names())
    old = Sealer("pump-1", KEY, key_id=0, epoch=1)
    new = Sealer("pump-1", new_key, key_id=1, epoch=1)
    new.seq = 1
    frames = [old.seal(b"a"), new.seal(b"b")]
    assert outcomes(verifier, frames + frames) == ["valid", "valid", "duplicate", "duplicate"]
    # The old key id does not vouch for a frame sealed with the new key, nor the reverse.
    swapped = Sealer("pump-1", new_key, key_id=0, epoch=1)
    swapped.seq = 2
    assert outcomes(verifier, [swapped.seal(b"c")]) == ["forged"]


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=165), epoch=st.integers(0, 2**32 - 1), seq=st.integers(0, 2**32 - 1),
       tag_len=st.sampled_from([8, 16, 32]), key_id=st.integers(0, 255),
       stamp=st.one_of(st.none(), st.integers(0, 2**53 - 1)), link=st.sampled_from(["lora", "wifi", "rs485"]))
def test_round_trip_property(payload, epoch, seq, tag_len, key_id, stamp, link):
    from hub.core.verifier import DeviceKeys, Verifier

    from .conftest import link_names

    sealer = Sealer("pump-1", KEY, key_id=key_id, link=link, epoch=epoch, tag_len=tag_len)
    sealer.seq = seq
    data = sealer.seal(payload, stamp)
    verifier = Verifier([DeviceKeys("pump-1", {key_id: KEY}, "wifi", tag_len)], link_names())
    assert verifier.verify(TOPIC, data, 0.0) == ("valid", "pump-1", link, epoch, seq, stamp, payload, "")


def test_unknown_device_ids_that_could_deceive_are_shown_escaped(verifier):
    """An attacker picks the topic: an id with a trailing space, a right-to-left override or a
    look-alike letter must not read as a real device's id in events or the console."""
    verifier_frame = b"\x00" * 20
    shown = {}
    for topic_id in ("pump-1 ", "pump\u202e1-", "pump-\u0406", "pump-2"):
        verdict = verifier.verify(f"linkseal/v1/{topic_id}/rec", verifier_frame, 100.0)
        assert verdict.outcome == "unknown_device"
        shown[topic_id] = verdict.device_id
    assert shown == {"pump-1 ": "pump-1\\x20", "pump\u202e1-": "pump\\u202e1-", "pump-\u0406": "pump-\\u0406",
                     "pump-2": "pump-2"}
    events = [e for e in verifier.events if e["kind"] == "unknown_device"]
    assert [e["device"] for e in events] == list(shown.values())
    assert all("shown escaped" in e["reason"] for e in events[:3]) and "escaped" not in events[3]["reason"]


def test_provisioning_refuses_ids_that_are_not_plain_ascii(tmp_path):
    import subprocess

    from hub.keys.keyfile import KeyFile
    from tools.services import LINKSEAL

    KeyFile.create(tmp_path / "hub.keys")
    for device_id in ("pump-1 ", " pump-1", "pump\u202e1", "pump-\u0406", "pump 1"):
        result = subprocess.run([str(LINKSEAL), "keys", "provision", device_id, "--keys", str(tmp_path / "hub.keys"),
                                 "--insecure-plaintext", "--link", "wifi", "--out", str(tmp_path / "d.json")],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and "device id has the character" in result.stderr, (device_id, result.stderr)
        assert "Traceback" not in result.stderr
