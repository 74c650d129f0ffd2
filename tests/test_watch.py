"""The hub's watch (hub/core/watch.py): liveness and behaviour, on the clock that feeds it."""

import pytest

from agent import Sealer, topic_for
from agent.sealer import status_topic_for
from agent.status import BIRTH, DEATH, status_payload
from hub.core.behaviour import DEFAULT_RULES, Rule, parse_rules, percentile
from hub.core.report import build_report, build_stored_report
from hub.core.watch import SILENT_AFTER, Watch
from hub.service.ingest import Ingest
from hub.service.storage.sqlite import SQLiteStorage

from .conftest import KEY, make_verifier


class Feed:
    """Devices sealing real frames into a real verifier and a watch, on a clock the test moves."""

    def __init__(self, *devices, rules=DEFAULT_RULES, window_s=300.0, heartbeat_s=30.0):
        self.verifier = make_verifier(*[(d, KEY, link, 16) for d, link in devices])
        self.watch = Watch(self.verifier.record_event, self.verifier.status, rules=rules, window_s=window_s,
                           heartbeat_s={"default": heartbeat_s})
        self.sealers = {d: Sealer(d, KEY, link=link, epoch=1) for d, link in devices}

    def send(self, device, t, payload=b"x" * 16, frame=None):
        self.watch.tick(t)
        frame = frame if frame is not None else self.sealers[device].seal(payload)
        verdict = self.verifier.verify(topic_for(device), frame, t)
        self.watch.observe(verdict, t)
        return verdict

    def status(self, device, kind, t, heartbeat_s=None):
        self.watch.tick(t)
        sealer = self.sealers[device]
        every = (heartbeat_s, None) if heartbeat_s else None
        verdict = self.verifier.verify_status(status_topic_for(device),
                                              sealer.seal_status(status_payload(kind, sealer, 0, 0, every=every)), t)
        self.watch.observe(verdict, t)
        return verdict

    def events(self, *kinds):
        return [(e["kind"], e["device"], e["t"]) for e in self.verifier.events if e["kind"] in kinds]


def test_a_device_that_stops_is_silent_three_heartbeats_after_it_was_last_heard_and_back_when_heard():
    feed = Feed(("pump-1", "wifi"), ("pump-2", "wifi"))
    feed.status("pump-1", BIRTH, 0.0, heartbeat_s=10)
    for t in range(0, 100, 5):
        feed.send("pump-2", float(t))
    # pump-1 announced 10 s heartbeats and sent nothing after t=0: silent as of t=30, noticed by t=35.
    assert feed.events("silent") == [("silent", "pump-1", 30.0)]
    assert feed.watch.liveness("pump-1") == ("silent", 30.0)
    assert feed.watch.silent == {"wifi": 1}
    assert feed.verifier.status["pump-1"].fields["heartbeat_s"] == 10
    feed.send("pump-1", 101.0)
    assert feed.events("back") == [("back", "pump-1", 101.0)]
    assert feed.watch.liveness("pump-1") == ("online", 101.0) and feed.watch.silent == {"wifi": 0}
    report = build_report(feed.verifier)
    assert report["devices"]["pump-1"]["liveness"] == "online"
    assert report["devices"]["pump-1"]["liveness_since"] == 101.0
    # pump-2 was heard every 5 s with the default period of 30 s: never silent.
    assert feed.watch.liveness("pump-2")[0] == "online"


def test_a_clean_death_is_offline_never_silent():
    feed = Feed(("pump-1", "wifi"), ("pump-2", "wifi"))
    feed.status("pump-1", BIRTH, 0.0, heartbeat_s=10)
    feed.status("pump-1", DEATH, 3.0)
    for t in range(0, 600, 5):
        feed.send("pump-2", float(t))
    assert feed.watch.liveness("pump-1") == ("offline", 3.0)
    assert feed.events("silent") == []
    assert build_report(feed.verifier)["devices"]["pump-1"]["liveness"] == "offline"
    feed.status("pump-1", BIRTH, 700.0)  # started again: online, and no `back` (it was never silent)
    assert feed.watch.liveness("pump-1") == ("online", 700.0) and feed.events("back") == []


def test_the_hub_being_blind_is_not_the_devices_going_quiet():
    feed = Feed(("pump-1", "wifi"), ("pump-2", "wifi"))
    feed.send("pump-1", 0.0)
    feed.send("pump-2", 0.0)
    feed.watch.hold(200.0)  # the hub was cut off (or stopped, or could not store) until t=200
    feed.send("pump-2", 200.0)
    for t in range(205, 285, 5):
        feed.send("pump-2", float(t))
    assert feed.events("silent") == []  # pump-1's silence counts from 200, not from 0
    feed.send("pump-2", 295.0)
    assert feed.events("silent") == [("silent", "pump-1", 200.0 + SILENT_AFTER * 30.0)]


def test_records_alone_keep_a_device_alive_and_frames_that_prove_nothing_do_not():
    feed = Feed(("pump-1", "wifi"), ("pump-2", "wifi"))
    frame = feed.sealers["pump-1"].seal(b"x")
    feed.send("pump-1", 0.0, frame=frame)
    for t in range(5, 200, 5):
        feed.send("pump-2", float(t))
        feed.send("pump-1", float(t), frame=frame)  # a replay of its old frame: says nothing of the device
    assert ("silent", "pump-1", 90.0) in feed.events("silent")


def test_restart_keeps_liveness_and_counts_silence_from_the_restart(tmp_path):
    verifier = make_verifier(("pump-1", KEY, "wifi", 16), ("pump-2", KEY, "wifi", 16))
    ingest = Ingest(verifier, SQLiteStorage(tmp_path / "hub.db"))
    sealers = {d: Sealer(d, KEY, link="wifi", epoch=1) for d in ("pump-1", "pump-2")}
    ingest.handle(topic_for("pump-1"), sealers["pump-1"].seal(b"a"), 0.0)
    for t in range(0, 200, 10):
        ingest.handle(topic_for("pump-2"), sealers["pump-2"].seal(b"b"), float(t))
    ingest.commit()
    stored = build_stored_report(ingest.storage)
    assert stored["devices"]["pump-1"]["liveness"] == "silent"
    assert stored["devices"]["pump-1"]["liveness_since"] == 90.0
    assert stored["links"]["wifi"]["silent_devices"] == 1
    ingest.storage.close()
    # The hub is down from t=190 to t=1000; pump-2 goes on meanwhile (its backlog in the broker).
    restarted = Ingest(make_verifier(("pump-1", KEY, "wifi", 16), ("pump-2", KEY, "wifi", 16)),
                       SQLiteStorage(tmp_path / "hub.db"))
    restarted.resume(1000.0)
    assert restarted.watch.liveness("pump-1") == ("silent", 90.0)  # as it was
    assert restarted.watch.liveness("pump-2")[0] == "online"
    restarted.tick(1080.0)  # within 3 periods of the restart: pump-2 is not silent for the hub's outage
    assert restarted.watch.liveness("pump-2")[0] == "online"
    restarted.tick(1095.0)
    assert restarted.watch.liveness("pump-2") == ("silent", 1090.0)
    restarted.commit()
    events = [(e["device"], e["kind"], e["t"]) for e in restarted.storage.events_since(None)]
    assert events == [("pump-1", "silent", 90.0), ("pump-2", "silent", 1090.0)]
    restarted.storage.close()


def own_normal_then(feed, device, windows, per_window, size=16, start=0.0):
    """per_window records of size bytes in each of `windows` windows of 300 s."""
    t = start
    for w in range(windows):
        for k in range(per_window):
            feed.send(device, start + w * 300.0 + k * 300.0 / per_window + 1, b"x" * size)
        t = start + (w + 1) * 300.0
    return t


def test_a_flood_of_authentic_records_alarms_and_clears():
    feed = Feed(("pump-1", "wifi"))
    t = own_normal_then(feed, "pump-1", 8, 10)  # 10 records per window: its normal
    t = own_normal_then(feed, "pump-1", 2, 100, start=t)  # 10x
    t = own_normal_then(feed, "pump-1", 4, 10, start=t)
    feed.watch.tick(t + 1)
    alarms = [e for e in feed.verifier.events if e["kind"] in ("behaviour_alarm", "behaviour_clear")]
    assert [(e["kind"], e["t"]) for e in alarms] == [("behaviour_alarm", 2700.0), ("behaviour_clear", 3600.0)]
    assert alarms[0]["reason"] == "record_flood: records 100 above 30 (3 x own normal 10) for 1 window"
    assert feed.watch.alarms == {("record_flood", "wifi"): 0}


def test_exfiltration_alarms_and_a_flood_does_not_become_normal():
    feed = Feed(("pump-1", "wifi"))
    t = own_normal_then(feed, "pump-1", 8, 10, size=20)
    t = own_normal_then(feed, "pump-1", 12, 10, size=160, start=t)  # 8x for an hour
    assert feed.watch.in_alarm("pump-1") == ["large_records", "largest_record"]  # still: breaches teach nothing
    assert feed.watch.alarms[("large_records", "wifi")] == 1


def test_a_slow_drift_is_learned_not_alarmed():
    feed = Feed(("pump-1", "wifi"))
    t = own_normal_then(feed, "pump-1", 8, 10, size=20)
    for w in range(288):  # a day: rate and size up 60%
        grown = 1 + 0.6 * w / 288
        t = own_normal_then(feed, "pump-1", 1, round(10 * grown), size=round(20 * grown), start=t)
    assert [e for e in feed.verifier.events if e["kind"] == "behaviour_alarm"] == []


def test_the_catch_up_after_the_hub_was_blind_is_not_a_flood():
    feed = Feed(("pump-1", "wifi"))
    t = own_normal_then(feed, "pump-1", 8, 10)
    feed.watch.hold(t + 600)  # the hub could not take anything in for 10 minutes; the broker kept it
    for k in range(40):
        feed.send("pump-1", t + 600 + k * 0.01)
    own_normal_then(feed, "pump-1", 4, 10, start=t + 900)
    assert [e for e in feed.verifier.events if e["kind"] == "behaviour_alarm"] == []


def test_forgeries_under_a_device_id_alarm_on_a_fixed_bound():
    feed = Feed(("pump-1", "wifi"))
    feed.send("pump-1", 1.0)
    forged = Sealer("pump-1", bytes(32), link="wifi", epoch=1)  # the right id, the wrong key
    for k in range(6):
        feed.send("pump-1", 10.0 + k, frame=forged.seal(b"z"))
    feed.watch.tick(301.0)
    alarms = [e["reason"] for e in feed.verifier.events if e["kind"] == "behaviour_alarm"]
    assert alarms == ["forgeries: forged 6 above 5 (fixed) for 1 window"]


def test_a_fleet_percentile_rule_alarms_on_the_device_far_above_its_kind():
    rules = (Rule("fleet_flood", "records", fleet=90, factor=3.0, alarm_after=1, clear_after=1),)
    devices = [(f"pump-{n}", "wifi") for n in range(8)]
    feed = Feed(*devices, rules=rules)
    sends = sorted((w * 300.0 + 1 + k * 290.0 / count, device) for w in range(10)
                   for n, (device, _) in enumerate(devices)
                   for count in [40 if device == "pump-0" and w == 9 else 5 + n % 3] for k in range(count))
    for t, device in sends:
        feed.send(device, t)
    feed.watch.tick(3001.0)
    alarms = [(e["device"], e["reason"]) for e in feed.verifier.events if e["kind"] == "behaviour_alarm"]
    assert alarms == [("pump-0", "fleet_flood: records 40 above 21 (3 x fleet p90 7) for 1 window")]


def test_rules_from_tables_and_what_is_wrong_with_them():
    rules = parse_rules([{"name": "big", "metric": "bytes_max", "above": 512, "alarm_after": 3}])
    assert rules[0].bound(None, None) == 512 and rules[0].alarm_after == 3 and rules[0].clear_after == 2
    for table, problem in (({"name": "x", "metric": "speed", "above": 1}, "metric must be one of"),
                           ({"name": "x", "metric": "records"}, "exactly one of"),
                           ({"name": "x", "metric": "records", "above": 1, "own": 2}, "exactly one of"),
                           ({"name": "x", "metric": "forged", "own": 2}, "learn no normal"),
                           ({"name": "x", "metric": "records", "fleet": 120}, "fleet must be"),
                           ({"name": "x", "metric": "records", "above": 1, "alarm_after": 0}, "alarm_after"),
                           ({"name": "x y", "metric": "records", "above": 1}, "name must be"),
                           ({"name": "x", "metric": "records", "above": 1, "colour": 1}, "unknown field colour")):
        with pytest.raises(ValueError, match=problem) as caught:
            parse_rules([table], "hub.toml")
        assert "[[behaviour]] number 1" in str(caught.value)
    assert percentile([1, 2, 3, 4], 50) == 2.5 and percentile([7], 99) == 7


def test_hub_toml_watch_settings(tmp_path):
    from hardware.link_registry import load_links
    from hub.service.config import ConfigError, load_settings

    config = tmp_path / "hub.toml"
    config.write_text("[watch]\nwindow_s = 60\n[watch.heartbeat_s]\nlora = 900\n\n"
                      "[[behaviour]]\nname = \"record_flood\"\nmetric = \"records\"\nown = 5.0\n")
    settings = load_settings(config, load_links())
    options = settings.watch_options()
    assert options["window_s"] == 60.0 and options["heartbeat_s"]["lora"] == 900.0
    names = [rule.name for rule in options["rules"]]
    assert names.count("record_flood") == 1 and len(names) == len(DEFAULT_RULES)
    assert next(r for r in options["rules"] if r.name == "record_flood").own == 5.0  # replaced the default
    config.write_text("[watch]\ndefault_behaviours = false\n[[behaviour]]\nname = \"b\"\nmetric = \"births\"\n"
                      "above = 1\n")
    assert [rule.name for rule in load_settings(config, load_links()).behaviours] == ["b"]
    for text, problem in (("[watch]\nwindow_s = 1\n", "window_s"), ("[watch.heartbeat_s]\nmars = 5\n", "mars"),
                          ("[watch]\ncolour = 1\n", "colour"),
                          ("[[behaviour]]\nname = \"b\"\nmetric = \"births\"\n", "exactly one of")):
        config.write_text(text)
        with pytest.raises(ConfigError, match=problem):
            load_settings(config, load_links())


def test_hub_workers_judge_against_the_whole_fleet_through_postgresql(postgres):
    """Two workers' partitions, one holding a link type's quiet devices and one its busy ones: the
    fleet percentile they share through PostgreSQL is the one a single hub computes over all,
    and each partition judges by it, not by its own share of the fleet."""
    from hub.core.watch import FLEET_MIN
    from hub.service.storage.postgres import FleetNormals

    rules = (Rule("fleet_flood", "records", fleet=90, factor=2.0, alarm_after=1, clear_after=1),)
    pace = {f"pump-{n}": 3 + n % 6 for n in range(12)}  # records a window: 3..8, each twice
    quiet = [(d, "wifi") for d, count in pace.items() if count <= 5]
    busy = [(d, "wifi") for d, count in pace.items() if count > 5]
    hourly = {"rules": rules, "heartbeat_s": 3600.0}  # never silent between records
    partitions = [Feed(*quiet, **hourly), Feed(*busy, **hourly)]
    single = Feed(*(quiet + busy), **hourly)
    alone = Feed(*quiet, **hourly)  # the quiet partition judging by itself
    for feed in partitions + [single, alone]:  # eight windows: every device learns its normal
        for t, device in sorted((w * 300.0 + 1 + k * 290.0 / pace[d], d) for d in feed.sealers
                                for w in range(8) for k in range(pace[d])):
            feed.send(device, t)
        feed.watch.tick(8 * 300.0 + 1)
    fleet = FleetNormals(postgres.url)
    try:
        for feed in partitions:
            fleet.share(feed.watch.learned_normals(), 2401.0)
        shared = fleet.percentiles({("records", 90)}, 0.0, FLEET_MIN)
    finally:
        fleet.close()
    normals = [values[0] for _, _, values in single.watch.learned_normals()]
    assert len(normals) == 12 and shared == {("wifi", "records", 90): pytest.approx(percentile(normals, 90))}
    assert 7 < shared[("wifi", "records", 90)] <= 8  # the busy half's pace, not the quiet half's
    partitions[0].watch.fleet = shared
    for feed in (partitions[0], alone):  # pump-0 sends 12: above 2 x its half's p90 (5), within the fleet's (8)
        for k in range(12):
            feed.send("pump-0", 2401.0 + k)
        feed.watch.tick(3001.0)
    alarmed = lambda feed: [e["reason"] for e in feed.verifier.events if e["kind"] == "behaviour_alarm"]  # noqa: E731
    assert len(alarmed(alone)) == 1 and alarmed(alone)[0].startswith("fleet_flood: records 12 above ")
    assert alarmed(partitions[0]) == []  # judged by the whole fleet: 12 is within 2 x 7.9
