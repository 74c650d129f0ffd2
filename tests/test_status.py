"""Status messages at the hub: authenticated birth, death and heartbeat, tail loss."""

import json
import random

from agent import Sealer, topic_for
from agent.sealer import status_topic_for
from agent.status import BIRTH, DEATH, HEARTBEAT, status_payload
from hub.core.counters import BURSTS, L2R, LOST, R2L, REORDERED
from hub.core.report import build_report, build_stored_report
from hub.service.ingest import Ingest
from hub.service.storage.sqlite import SQLiteStorage

from .conftest import KEY, make_verifier

REC, STATUS = topic_for("pump-1"), status_topic_for("pump-1")


def status(sealer, kind, queued=0, drops=0, sent=None, cause=None):
    return sealer.seal_status(status_payload(kind, sealer, queued, drops, sent, cause))


def test_birth_heartbeat_death_are_kept_and_reported():
    verifier, sealer = make_verifier(), Sealer("pump-1", KEY, epoch=3)
    assert verifier.verify_message(STATUS, status(sealer, BIRTH, queued=5, drops=2, cause="watchdog"), 1.0).outcome \
        == "valid"
    for _ in range(4):
        assert verifier.verify_message(REC, sealer.seal(b"r"), 2.0).outcome == "valid"
    beat = verifier.verify_message(STATUS, status(sealer, HEARTBEAT, queued=1, drops=2, sent=(3, 3)), 3.0)
    assert (beat.outcome, beat.reason, beat.epoch, beat.seq) == ("valid", "heartbeat", 3, 1)
    assert verifier.verify_message(STATUS, status(sealer, DEATH, queued=1, drops=2), 4.0).outcome == "valid"
    report = build_report(verifier)
    device = report["devices"]["pump-1"]
    assert device["source_drops"] == 2 and report["links"]["wifi"]["source_drops"] == 2
    assert device["status"]["online"] is False and device["status"]["last"] == "death"
    assert device["status"]["fw"] and device["status"]["reset_cause"] == "watchdog"
    assert device["status"]["next_seq"] == 4 and device["lost"] == 0
    kinds = [(e["kind"], e["reason"][:10]) for e in report["events"]]
    assert kinds == [("birth", "connected:"), ("death", "connection")]


def test_a_status_message_never_passes_for_a_record_nor_the_reverse():
    verifier, sealer = make_verifier(), Sealer("pump-1", KEY)
    as_record = verifier.verify_message(REC, status(sealer, HEARTBEAT), 1.0)
    as_status = verifier.verify_message(STATUS, sealer.seal(b'{"type": "death"}'), 1.0)
    assert (as_record.outcome, as_status.outcome) == ("forged", "forged")
    assert as_status.reason == "status: MAC mismatch"
    assert build_report(verifier)["devices"]["pump-1"]["status"] is None


def test_status_replays_and_forgeries_are_refused_and_logged():
    verifier, sealer = make_verifier(), Sealer("pump-1", KEY)
    birth = status(sealer, BIRTH)
    assert verifier.verify_message(STATUS, birth, 1.0).outcome == "valid"
    assert verifier.verify_message(STATUS, birth, 2.0).outcome == "replay"
    stranger = Sealer("pump-1", bytes(32))
    assert verifier.verify_message(STATUS, status(stranger, DEATH), 3.0).outcome == "forged"
    damaged = bytearray(status(sealer, HEARTBEAT))
    damaged[5] ^= 1
    assert verifier.verify_message(STATUS, bytes(damaged), 4.0).outcome == "corrupt"
    # Damage is damage, on a status message as on a record: counted on the device and its link.
    report = build_report(verifier)
    assert report["devices"]["pump-1"]["corrupt"] == report["links"]["wifi"]["corrupt"] == 1
    # Authentic but not a status document: malformed, and it changes nothing.
    assert verifier.verify_message(STATUS, sealer.seal_status(b"[1, 2]"), 5.0).outcome == "malformed"
    assert [e["kind"] for e in verifier.events] == ["birth", "replay", "forged"]
    assert verifier.status["pump-1"].fields["online"] is True


def test_a_death_sealed_before_later_heartbeats_is_still_accepted():
    # The will is sealed at connect, before the heartbeats, but the broker sends it last.
    verifier, sealer = make_verifier(), Sealer("pump-1", KEY)
    birth, will = status(sealer, BIRTH), status(sealer, DEATH)
    beats = [status(sealer, HEARTBEAT) for _ in range(3)]
    outcomes = [verifier.verify_message(STATUS, m, float(i)).outcome for i, m in enumerate([birth, *beats, will])]
    assert outcomes == ["valid"] * 5 and verifier.status["pump-1"].fields["online"] is False


def test_a_death_of_the_epoch_before_arriving_after_the_next_birth_is_kept_not_called_a_replay():
    verifier = make_verifier()
    before, after = Sealer("pump-1", KEY, epoch=4), Sealer("pump-1", KEY, epoch=5)
    verifier.verify_message(STATUS, status(before, BIRTH), 1.0)
    will = status(before, DEATH)  # sealed at the epoch-4 connect, published by the broker late
    assert verifier.verify_message(STATUS, status(after, BIRTH), 2.0).outcome == "valid"
    assert verifier.verify_message(STATUS, will, 3.0).outcome == "valid"
    assert verifier.verify_message(STATUS, will, 4.0).outcome == "replay"
    fields = verifier.status["pump-1"].fields
    assert fields["online"] is True and fields["epoch"] == 5  # the old death does not take epoch 5 offline
    assert [e["kind"] for e in verifier.events] == ["birth", "birth", "death", "replay"]
    assert "epoch 4" in verifier.events[2]["reason"]
    older = Sealer("pump-1", KEY, epoch=3)
    assert verifier.verify_message(STATUS, status(older, DEATH), 5.0).outcome == "replay"  # two epochs back


def brute_force(received, base, top, tail_counted):
    """Loss, runs and transitions of a received/lost pattern, computed the slow way."""
    pattern = [seq in received for seq in range(base, top + 1)]
    lost = pattern.count(False)
    r2l = sum(1 for a, b in zip(pattern, pattern[1:]) if a and not b)
    l2r = sum(1 for a, b in zip(pattern, pattern[1:]) if not a and b) + (tail_counted and not pattern[-1])
    runs = sum(1 for i, x in enumerate(pattern) if not x and (i == 0 or pattern[i - 1]))
    return lost, r2l, l2r, runs


def test_heartbeats_reveal_tail_loss_exactly_and_late_frames_take_it_back():
    rng = random.Random(7)
    for _ in range(60):
        verifier, sealer = make_verifier(), Sealer("pump-1", KEY, epoch=1)
        frames = [sealer.seal(b"r") for _ in range(40)]
        events = [("frame", seq) for seq in range(40) if rng.random() < 0.7]
        events += [("beat", rng.randrange(40)) for _ in range(3)]
        rng.shuffle(events)
        received = set()
        for kind, seq in events:
            if kind == "frame":
                verifier.verify_message(REC, frames[seq], 1.0)
                received.add(seq)
            else:
                verifier.verify_message(STATUS, status(sealer, HEARTBEAT, sent=(1, seq)), 1.0)
        window = verifier._devices[REC].current if REC in verifier._devices else None
        counters = verifier.counters_for_device("pump-1")
        if window is None:
            continue
        lost, r2l, l2r, runs = brute_force(received, window.base, window.top, tail_counted=True)
        assert (counters[LOST], counters[R2L], counters[L2R], counters[BURSTS]) == (lost, r2l, l2r, runs), events
        assert counters[REORDERED] >= 0


def test_status_survives_a_hub_restart_and_source_drops_are_not_link_loss(tmp_path):
    sealer = Sealer("pump-1", KEY)
    db = tmp_path / "hub.db"
    ingest = Ingest(make_verifier(), SQLiteStorage(db))
    birth = status(sealer, BIRTH)
    ingest.handle(STATUS, birth, 60.0)
    frames = [sealer.seal(b"r") for _ in range(5)]
    for frame in frames[:2]:  # 2 and 3: dropped on the device (queue full); 4: lost on the link
        ingest.handle(REC, frame, 61.0)
    ingest.handle(STATUS, status(sealer, HEARTBEAT, drops=2, sent=(0, 4)), 62.0)
    ingest.commit()
    ingest.storage.close()

    restarted = Ingest(make_verifier(), SQLiteStorage(db))
    assert restarted.handle(STATUS, birth, 63.0).outcome == "replay"
    restarted.commit()
    report = build_stored_report(restarted.storage)
    device = report["devices"]["pump-1"]
    assert (device["valid"], device["lost"], device["source_drops"]) == (2, 1, 2)
    assert report["links"]["wifi"]["source_drops"] == 2 and report["links"]["wifi"]["loss_rate"] == 1 / 3
    assert device["status"]["last"] == "heartbeat" and json.dumps(report)


def test_a_device_state_stored_before_the_source_drops_counter_still_loads():
    from array import array

    from agent.link_codes import LINKS
    from hub.core.counters import LINK_SLOTS, SLOTS
    from hub.core.window import EpochWindow

    verifier = make_verifier()
    stored_v1 = bytes((1, LINKS["wifi"][0], 0)) + array("q", range(1, 13)).tobytes()
    assert verifier.restore_device("pump-1", stored_v1)
    assert list(verifier.counters_for_device("pump-1")) == list(range(1, 13)) + [0] * (SLOTS - 12)
    stored_v2 = bytes((2, LINKS["wifi"][0], 0)) + array("q", range(1, 14)).tobytes()  # before redelivered
    assert verifier.restore_device("pump-1", stored_v2)
    assert list(verifier.counters_for_device("pump-1")) == list(range(1, 14)) + [0] * (SLOTS - 13)
    # Format 3: before the on-device losses, with the one-block-shorter ring (129 bytes, seq % 1032):
    # seqs 0-9 of epoch 1 seen but 4.
    ring = bytearray(129)
    for seq in (0, 1, 2, 3, 5, 6, 7, 8, 9):
        ring[seq >> 3] |= 1 << (seq & 7)
    window = EpochWindow._HEAD.pack(1, 0, 9, LINKS["wifi"][0], 1, 0) + bytes(ring)
    stored_v3 = bytes((3, LINKS["wifi"][0], 1)) + array("q", range(1, 15)).tobytes() + window
    assert verifier.restore_device("pump-1", stored_v3)
    assert list(verifier.counters_for_device("pump-1")) == list(range(1, 15)) + [0] * (SLOTS - 14)
    sealer = Sealer("pump-1", KEY, epoch=1)
    frames = [sealer.seal(b"r") for _ in range(10)]
    assert [verifier.verify(topic_for("pump-1"), frames[s], 1.0).outcome for s in (3, 4, 4)] == \
        ["duplicate", "valid", "duplicate"]
    verifier.restore_link("wifi", array("q", range(12)).tobytes())
    assert len(dict(verifier.links())["wifi"]) == LINK_SLOTS


def test_status_messages_share_the_device_rate_limit():
    from hub.core.verifier import DeviceKeys, Verifier

    from .conftest import link_names

    verifier = Verifier([DeviceKeys("pump-1", {0: KEY}, "wifi")], link_names(), rate_limits={"wifi": (1.0, 2)})
    sealer = Sealer("pump-1", KEY)
    outcomes = [verifier.verify_message(STATUS, status(sealer, HEARTBEAT), 0.0).outcome for _ in range(4)]
    assert outcomes == ["valid", "valid", "rate_limited", "rate_limited"]


def test_the_tables_keep_births_apart_from_security_events():
    from rich.console import Console

    from hub.table import print_report

    verifier, sealer = make_verifier(), Sealer("pump-1", KEY)
    for i in range(7):  # seven reconnects, then one forgery
        verifier.verify_message(STATUS, status(sealer, BIRTH, drops=4), float(i))
    verifier.verify_message(REC, Sealer("pump-1", bytes(32)).seal(b"x"), 9.0)
    console = Console(width=80, record=True)
    print_report(build_report(verifier), console, devices=True)
    text = console.export_text()
    assert "Security events: 1 forged." in text and "Device status: 7 births" in text
    assert "  forged" in text and "  birth" not in text
    row = next(line for line in text.splitlines() if line.startswith(" pump-1"))
    assert row.split()[-2:] == ["4", "online"]  # source drops, state


def test_records_refused_at_the_source_are_reported():
    verifier, sealer = make_verifier(), Sealer("pump-1", KEY)
    beat = sealer.seal_status(status_payload(HEARTBEAT, sealer, 0, 0, refused=3))
    assert verifier.verify_message(STATUS, beat, 1.0).outcome == "valid"
    assert build_report(verifier)["devices"]["pump-1"]["status"]["refused"] == 3
    bad = sealer.seal_status(b'{"type": "heartbeat", "next_seq": 0, "queued": 0, "source_drops": 0, "refused": -1}')
    assert verifier.verify_message(STATUS, bad, 2.0).outcome == "malformed"


def test_compact_status_says_what_the_json_one_says_in_a_few_bytes():
    """A compact (LoRaWAN) device's status: the same fields as JSON, minus fw and flash_writes,
    read by the hub into the same document."""
    from agent.compact_status import compact_status_payload
    from hub.core.status import parse_status

    sealer = Sealer("field-tx-3", KEY, link="lora", epoch=9, tag_len=8, compact=True)
    for _ in range(300):
        sealer.seal(b"r")
    cases = [
        dict(kind=BIRTH, queued=2, source_drops=5, sent=None, reset_cause="watchdog", refused=1,
             prev=[8, 40, 44, 4], too_large=3),
        dict(kind=HEARTBEAT, queued=0, source_drops=0, sent=[9, 299], reset_cause=None, refused=0, prev=None,
             too_large=0),
        dict(kind=DEATH, queued=7, source_drops=70000, sent=[9, 290], reset_cause=None, refused=0, prev=None,
             too_large=0),
    ]
    for case in cases:
        compact = compact_status_payload(case["kind"], sealer, case["queued"], case["source_drops"], case["sent"],
                                         case["reset_cause"], case["refused"], case["prev"], case["too_large"])
        full = status_payload(case["kind"], sealer, case["queued"], case["source_drops"], case["sent"],
                              case["reset_cause"], case["refused"], case["prev"], None, case["too_large"])
        expected = {k: v for k, v in json.loads(full).items() if k != "fw"}
        read = {k: v for k, v in parse_status(compact, compact=True).items() if v or k not in ("refused", "too_large")}
        assert read == expected
        assert len(compact) < len(full) / 3
    quiet = compact_status_payload(HEARTBEAT, sealer, 0, 0)
    assert len(quiet) == 8  # type, flags, next_seq 300 (2 bytes), four zero counters


def test_a_bad_compact_status_is_refused_with_its_reason():
    from agent.compact_status import compact_status_payload
    from hub.core.status import parse_status

    sealer = Sealer("field-tx-3", KEY, link="lora", epoch=9, tag_len=8, compact=True)
    good = compact_status_payload(BIRTH, sealer, 0, 0, reset_cause="power_on")
    for bad, reason in [(b"", "unknown type"), (b"\x04\x00", "unknown type"), (b"\x03\x08", "flags"),
                        (good[:-1], "reset cause"), (good + b"\x00", "after its last field"),
                        (b"\x03\x00\x80\x00\x00\x00\x00\x00", "shortest form"), (b"\x03\x00\x01\x00", "varint"),
                        (b"\x03\x00\x00\x00\x01\x00\x02", "too_large")]:
        try:
            parse_status(bad, compact=True)
        except ValueError as exc:
            assert reason in str(exc), (bad, exc)
        else:
            raise AssertionError(f"{bad!r} was read")


def test_compact_status_messages_through_the_verifier():
    from agent.compact_status import compact_status_payload

    from hub.core.verifier import DeviceKeys, Verifier

    from .conftest import link_names

    verifier = Verifier([DeviceKeys("field-tx-3", {0: KEY}, "lora", 8, compact=True)], link_names())
    sealer = Sealer("field-tx-3", KEY, link="lora", epoch=2, tag_len=8, compact=True)
    birth = sealer.seal_status(compact_status_payload(BIRTH, sealer, 0, 0, reset_cause="power_on"))
    topic = status_topic_for("field-tx-3")
    assert verifier.verify_message(topic, birth, 1.0).outcome == "valid"
    assert verifier.verify_message(topic, birth, 2.0).outcome == "replay"
    json_birth = sealer.seal_status(status_payload(BIRTH, sealer, 0, 0))  # JSON under the compact seal
    assert verifier.verify_message(topic, json_birth, 3.0).outcome == "malformed"
    status = build_report(verifier)["devices"]["field-tx-3"]["status"]
    assert (status["last"], status["reset_cause"], status["epoch"]) == ("birth", "power_on", 2)
