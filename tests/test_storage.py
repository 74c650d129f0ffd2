"""The ingest path with real SQLite files: restarts, exactly-once, buckets, the event chain, fuzzing."""

import sqlite3
import stat
import tracemalloc
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import Sealer, topic_for
from hub.core.report import build_report, build_stored_report
from hub.core.verifier import OUTCOMES
from hub.service.ingest import Ingest
from hub.service.storage.sqlite import SQLiteStorage, StorageError

from .conftest import KEY, link_names, make_verifier

TOPIC = topic_for("pump-1")


def open_ingest(path):
    return Ingest(make_verifier(("pump-1", KEY, "wifi", 16), ("pump-2", KEY, "ble", 16)), SQLiteStorage(path))


def frames(n, epoch=1, device="pump-1", link="wifi"):
    sealer = Sealer(device, KEY, link=link, epoch=epoch)
    return [sealer.seal(b"%d" % i) for i in range(n)]


def test_restart_continues_counters_and_never_reaccepts(tmp_path):
    db = tmp_path / "hub.db"
    stream = frames(50)
    ingest = open_ingest(db)
    for i, data in enumerate(stream[:30]):
        if i != 10:  # seq 10 lost
            ingest.handle(TOPIC, data, 1000.0 + i)
    ingest.commit()
    ingest.storage.close()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600

    ingest = open_ingest(db)  # a new process: state comes back from the database
    outcomes = [ingest.handle(TOPIC, data, 2000.0).outcome for data in stream]
    ingest.commit()
    assert outcomes[:30] == ["duplicate"] * 10 + ["valid"] + ["duplicate"] * 19
    assert outcomes[30:] == ["valid"] * 20
    report = build_stored_report(ingest.storage)
    device = report["devices"]["pump-1"]
    assert (device["received"], device["valid"], device["lost"], device["duplicate"]) == (79, 50, 0, 29)
    assert device["reordered"] == 1
    rows = sqlite3.connect(db).execute("SELECT seq FROM records WHERE device = 'pump-1' ORDER BY seq").fetchall()
    assert [r[0] for r in rows] == list(range(50))


def test_uncommitted_work_is_redone_after_a_crash(tmp_path):
    db = tmp_path / "hub.db"
    stream = frames(10)
    ingest = open_ingest(db)
    for data in stream[:5]:
        ingest.handle(TOPIC, data, 1.0)
    ingest.commit()
    for data in stream[5:]:
        ingest.handle(TOPIC, data, 2.0)
    # The process dies here: the last five were verified but never committed nor acknowledged.
    ingest = open_ingest(db)
    assert [ingest.handle(TOPIC, d, 3.0).outcome for d in stream] == ["duplicate"] * 5 + ["valid"] * 5


def test_stored_report_matches_the_live_report(tmp_path):
    ingest = open_ingest(tmp_path / "hub.db")
    wifi, ble = frames(40), frames(5, device="pump-2", link="ble")
    damaged = bytearray(wifi[3])
    damaged[7] ^= 4
    order = wifi[:3] + [bytes(damaged)] + wifi[5:20] + wifi[4:5] + wifi[20:] + wifi[:2]
    messages = [(TOPIC, data) for data in order] + [(topic_for("pump-2"), data) for data in ble[1:]]
    messages.append(("linkseal/v1/nobody/rec", b"x"))
    for i, (topic, data) in enumerate(messages):
        ingest.handle(topic, data, 60.0 * i)  # spread over many minute buckets
        if i % 7 == 0:
            ingest.commit()
    ingest.commit()
    live, stored = build_report(ingest.verifier), build_stored_report(ingest.storage)
    assert stored == {**live, "events": stored["events"]}
    assert live["events"] == []  # drained into storage by the commits
    # A minute between messages, 3 heartbeats of 30 s: pump-1 is silent when its frame of t=180
    # arrives damaged (heard at 120, silent as of 210, back at 240), and again once pump-2 sends.
    assert [(e["device"], e["kind"], e["t"]) for e in stored["events"]] == [
        ("pump-1", "silent", 210.0), ("pump-1", "back", 240.0), ("pump-1", "silent", 2430.0),
        ("nobody", "unknown_device", 2760.0)]
    assert stored["devices"]["pump-1"]["liveness"] == "silent" and stored["devices"]["pump-2"]["liveness"] == "online"
    # seq 3 of pump-1 only ever arrived damaged; pump-2 was first seen at seq 1, so counts from there.
    assert stored["devices"]["pump-1"]["lost"] == 1 and stored["devices"]["pump-2"]["lost"] == 0


def test_since_and_link_filters(tmp_path):
    ingest = open_ingest(tmp_path / "hub.db")
    for i, data in enumerate(frames(10)):
        ingest.handle(TOPIC, data, 600.0 * i)  # one frame every 10 minutes
    for data in frames(3, device="pump-2", link="ble"):
        ingest.handle(topic_for("pump-2"), data, 5400.0)
    ingest.commit()
    recent = build_stored_report(ingest.storage, since=4200.0)
    assert recent["links"]["wifi"]["received"] == 3  # minutes 70, 80, 90
    only_ble = build_stored_report(ingest.storage, link="ble")
    assert set(only_ble["links"]) == {"ble"} and set(only_ble["devices"]) == {"pump-2"}


def test_event_chain_detects_edits_removals_and_truncation(tmp_path):
    db = tmp_path / "hub.db"
    ingest = open_ingest(db)
    for i in range(6):
        ingest.handle(f"linkseal/v1/stranger-{i}/rec", b"x", float(i))
        ingest.commit()
    storage = ingest.storage
    assert storage.audit() == (6, None)
    raw = sqlite3.connect(db)
    raw.execute("DELETE FROM events WHERE id = 6")
    raw.commit()
    assert "cut off" in storage.audit()[1]
    raw.execute("DELETE FROM events WHERE id = 3")
    raw.commit()
    assert storage.audit()[1].startswith("event 4: does not follow")
    raw.execute("UPDATE events SET device = 'someone-else' WHERE id = 2")
    raw.commit()
    assert storage.audit() == (1, "event 2: its contents were changed after it was written")


def test_not_a_database(tmp_path):
    path = tmp_path / "hub.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StorageError, match="not a usable SQLite database"):
        SQLiteStorage(path)
    with pytest.raises(StorageError, match="no such hub database"):
        SQLiteStorage(tmp_path / "absent.db", create=False)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=st.lists(st.tuples(
    st.one_of(st.sampled_from([TOPIC, topic_for("pump-2"), "linkseal/v1//rec", "linkseal/v1/a/b/rec", "#", ""]),
              st.text(max_size=80)),
    st.one_of(st.binary(max_size=300), st.sampled_from(frames(5)).map(lambda f: f[: len(f) // 2]),
              st.sampled_from(frames(5)), st.integers(2000, 300000).map(lambda n: b"\x11" * n))), max_size=40))
def test_no_input_breaks_the_ingest_path(tmp_path_factory, messages):
    ingest = open_ingest(tmp_path_factory.mktemp("fuzz") / "hub.db")
    for topic, payload in messages:
        assert ingest.handle(topic, payload, 1.0).outcome in OUTCOMES
    ingest.commit()
    report = build_stored_report(ingest.storage)
    total = sum(link["received"] for link in report["links"].values()) + report["unknown_device"]
    assert total == len(messages)


def test_flood_of_unknown_devices_keeps_memory_flat():
    verifier = make_verifier()
    data = frames(1)[0]

    def flood(start, count):
        for i in range(start, start + count):
            verifier.verify(f"linkseal/v1/intruder-{i}/rec", data, 0.0)
            if i % 1000 == 0:
                verifier.drain_events()  # the service stores events each commit
        verifier.drain_events()

    flood(0, 5000)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    flood(5000, 50000)
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert verifier.unknown_device == 55000
    assert verifier.device_count == 1 and list(verifier.devices()) == []
    assert grown < 64 * 1024, f"memory grew by {grown} bytes under a flood of unknown device ids"


def test_rate_limit_is_a_token_bucket_per_device():
    from hub.core.verifier import DeviceKeys, Verifier

    devices = [DeviceKeys(d, {0: KEY}, "wifi", 16) for d in ("pump-1", "pump-2")]
    verifier = Verifier(devices, link_names(), rate_limits={"wifi": (2.0, 3.0)})  # 2 frames/s, burst 3
    noisy, quiet = frames(10), frames(2, device="pump-2")
    got = [verifier.verify(TOPIC, data, 100.0).outcome for data in noisy[:5]]
    assert got == ["valid"] * 3 + ["rate_limited"] * 2
    assert [verifier.verify(topic_for("pump-2"), d, 100.0).outcome for d in quiet] == ["valid", "valid"]
    # One second later two tokens have come back. A refused frame is settled (refused, and
    # acknowledged upstream): a copy of it is a duplicate, which costs no token.
    assert [verifier.verify(TOPIC, d, 101.0).outcome for d in noisy[3:8]] == [
        "duplicate", "duplicate", "valid", "valid", "rate_limited"]
    pump = build_report(verifier)["devices"]["pump-1"]
    # The hub's refusals are not the link's loss: their positions count as received.
    assert (pump["rate_limited"], pump["lost"], pump["valid"]) == (3, 0, 5)


def test_frames_that_fail_their_mac_or_repeat_spend_no_rate():
    """Garbage, forgeries and replayed copies on a device's topic (anyone with its broker
    login can send them) leave its token bucket alone: the real device loses nothing."""
    from hub.core.verifier import DeviceKeys, Verifier

    verifier = Verifier([DeviceKeys("pump-1", {0: KEY}, "wifi", 16)], link_names(), rate_limits={"wifi": (1.0, 2.0)})
    real = frames(4)
    assert verifier.verify(TOPIC, real[0], 10.0).outcome == "valid"
    forged = [Sealer("pump-1", b"\x01" * 32, link="wifi", epoch=1).seal(b"%d" % i) for i in range(50)]
    flood = [b"\x00" * 40, real[1][:-1] + bytes([real[1][-1] ^ 1])] * 500 + forged + [real[0]] * 500
    outcomes = Counter(verifier.verify(TOPIC, data, 10.0).outcome for data in flood)
    assert outcomes == {"corrupt": 1000, "forged": 50, "duplicate": 500}
    assert [verifier.verify(TOPIC, data, 10.0).outcome for data in real[1:3]] == ["valid", "rate_limited"]


def test_a_stall_credits_what_devices_sent_meanwhile_and_the_credit_lapses():
    from hub.core.verifier import DeviceKeys, Verifier

    verifier = Verifier([DeviceKeys("pump-1", {0: KEY}, "wifi", 16)], link_names(), rate_limits={"wifi": (10.0, 5.0)})
    backlog = frames(400)
    assert [verifier.verify(TOPIC, d, 0.0).outcome for d in backlog[:5]] == ["valid"] * 5
    # The hub was down 30 s while the device sent 8 frames a second (within its 10): 240 frames
    # arrive at once after the restart, and every one is valid.
    verifier.credit_stall(30.0, 30.0)
    assert Counter(verifier.verify(TOPIC, d, 30.0).outcome for d in backlog[5:245]) == {"valid": 240}
    # Credit left over lapses after as long again: the bucket is back to its burst of 5.
    assert Counter(verifier.verify(TOPIC, d, 61.0).outcome for d in backlog[245:265]) == {"valid": 5,
                                                                                         "rate_limited": 15}
    # A device really above its rate is still limited, stall or not: 100 frames within a second
    # after a 1 s stall pass its burst and that second's rate, no more.
    verifier.credit_stall(1.0, 62.0)
    got = Counter(verifier.verify(TOPIC, d, 62.0).outcome for d in backlog[265:365])
    assert got == {"valid": 5 + 10, "rate_limited": 85}


def test_a_schema_1_database_is_migrated_to_the_outbox_in_arrival_order(tmp_path):
    import sqlite3

    from hub.service.storage.sqlite import SCHEMA_VERSION, SQLiteStorage

    db = tmp_path / "old.db"
    old = sqlite3.connect(db)
    old.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema', '1');
        CREATE TABLE records (device TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL, link TEXT NOT NULL,
            device_time_ms INTEGER, arrival REAL NOT NULL, payload BLOB NOT NULL,
            PRIMARY KEY (device, epoch, seq)) WITHOUT ROWID;
        INSERT INTO records VALUES ('b', 1, 0, 'wifi', NULL, 20.0, x'02'), ('a', 1, 0, 'wifi', NULL, 10.0, x'01'),
                                   ('a', 1, 1, 'wifi', NULL, 30.0, x'03');""")
    old.commit()
    old.close()
    storage = SQLiteStorage(db)
    rows = storage.db.execute("SELECT id, device, seq, payload FROM records ORDER BY id").fetchall()
    assert rows == [(1, "a", 0, b"\x01"), (2, "b", 0, b"\x02"), (3, "a", 1, b"\x03")]
    assert storage.db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0] == str(SCHEMA_VERSION)
    assert storage.last_record_id() == 3
    storage.close()
