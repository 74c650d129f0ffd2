"""The report schema and its statistics."""

import json
import math

from agent import Sealer, topic_for
from hub.core.report import build_report, to_json, wilson_interval

from .conftest import KEY, make_verifier

COUNTERS = {"received", "valid", "lost", "duplicate", "reordered", "corrupt", "forged", "replay", "malformed",
            "rate_limited", "redelivered", "lost_on_device", "lost_unknown", "unencrypted", "epoch_reuse"}
FIGURES = {"loss_rate", "loss_rate_ci", "loss_rate_ci_method", "lost_on_device_max", "corrupt_rate", "corrupt_rate_ci", "burst_mean", "ge_p",
           "ge_r"}
LINK_FIGURES = {"ge_fit", "ge_fit_reason", "abnormal"}


def test_wilson_interval_known_values():
    # 0 of 10: upper bound z^2/(n+z^2); 5 of 10 is symmetric around 0.5.
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and math.isclose(high, 0.2775328, rel_tol=1e-6)
    low, high = wilson_interval(5, 10)
    assert math.isclose(low + high, 1.0) and math.isclose(low, 0.2365931, rel_tol=1e-6)
    assert wilson_interval(0, 0) == [0.0, 1.0]


def test_schema_has_exactly_the_documented_keys():
    verifier = make_verifier()
    sealer = Sealer("pump-1", KEY)
    frames = [sealer.seal(b"x") for _ in range(5)]
    for f in frames[:2] + frames[3:]:
        verifier.verify(topic_for("pump-1"), f, 1.0)
    verifier.verify("linkseal/v1/ghost/rec", frames[0], 2.0)
    report = json.loads(to_json(build_report(verifier)))
    assert set(report) == {"links", "devices", "events", "unknown_device"}
    assert set(report["links"]["wifi"]) == COUNTERS | FIGURES | LINK_FIGURES | {"source_drops", "silent_devices"}
    assert set(report["devices"]["pump-1"]) == COUNTERS | FIGURES | {"link", "source_drops", "status", "liveness",
                                                                     "liveness_since"}
    assert report["devices"]["pump-1"]["liveness"] == "online" and report["links"]["wifi"]["silent_devices"] == 0
    for name in COUNTERS:
        assert isinstance(report["links"]["wifi"][name], int)
    assert report["links"]["wifi"]["loss_rate"] == 0.2
    assert report["links"]["wifi"]["loss_rate_ci"] == wilson_interval(1, 5)
    assert report["links"]["wifi"]["ge_fit"] is None and "too little data" in report["links"]["wifi"]["ge_fit_reason"]
    assert report["events"] == [{"t": 2.0, "device": "ghost", "link": None, "kind": "unknown_device",
                                 "reason": "no key for this device"}]


def test_empty_verifier_gives_an_empty_report():
    assert build_report(make_verifier()) == {"links": {}, "devices": {}, "unknown_device": 0, "events": []}


def test_abnormal_only_when_the_excess_is_significant():
    from hub.core.counters import LOST, VALID, new_counters
    from hub.core.report import abnormal_reasons, entry

    def link_entry(lost, valid):
        counters = new_counters()
        counters[LOST], counters[VALID] = lost, valid
        return entry(counters)

    # 1% loss over 2000 frames: abnormal for fibre, normal for WiFi.
    assert abnormal_reasons("fiber", link_entry(20, 1980)) and not abnormal_reasons("wifi", link_entry(20, 1980))
    # One loss in 5000 frames on fibre is twice the expected rate, but could be chance.
    assert abnormal_reasons("fiber", link_entry(1, 4999)) == []
    assert "loss" in abnormal_reasons("fiber", link_entry(20, 1980))[0]
