"""The relay's spool and its own figures: bounded on disk, kept across a restart, a device's
repeat never queued twice, damaged copies each kept; /metrics and /health say so."""

import json
import urllib.request

from relay.intake import Arrival
from relay.metrics import health, prometheus_text, serve
from relay.spool import Spool


def frame(n: int, size: int = 60) -> bytes:
    return bytes([n]) * (size - 4) + n.to_bytes(4, "big")


def test_the_spool_keeps_order_across_a_restart_and_refuses_when_full(tmp_path):
    spool = Spool(tmp_path, max_bytes=1000)
    first = Arrival(1, "plc-7", frame(1), True)
    assert spool.put(first) == "queued"
    assert spool.put(first) == "waiting"  # the device sent it again: one copy waits
    damaged = Arrival(1, "plc-7", frame(1)[:-1] + b"\xff", False)
    assert spool.put(damaged) == spool.put(damaged) == "queued"  # each damaged copy is a measurement
    outcomes = [spool.put(Arrival(1, f"rtu-{n}", frame(n), True)) for n in range(20)]
    assert "full" in outcomes and spool.refused == outcomes.count("full") and spool.bytes <= 1000
    again = Spool(tmp_path, max_bytes=1000)  # a restart (kill -9 included): the same frames, in order
    assert again.depth == spool.depth and again.bytes == spool.bytes
    assert again.oldest(0) == first and again.put(first) == "waiting"
    again.taken()
    assert again.oldest(0) == damaged and again.put(first) == "queued"  # taken by the broker: new again
    while again.depth:
        again.taken()
    assert again.oldest(0) is None and again.bytes == 0


class Stub:
    """What metrics read of a relay: figures, its spool, whether the broker is connected."""

    def __init__(self, spool, connected):
        self.spool = spool
        self.last_frame_at = None
        self.publisher = type("P", (), {"connected": type("E", (), {"is_set": lambda self: connected})()})()

    def figures(self):
        return {"line_frames": 3, "published": 2, "spooled": self.spool.depth, "spool_bytes": self.spool.bytes}


def test_metrics_and_health(tmp_path):
    spool = Spool(tmp_path)
    text = prometheus_text(Stub(spool, True).figures(), True)
    assert "linkseal_relay_published_total 2" in text and "# TYPE linkseal_relay_spooled gauge" in text
    assert health(Stub(spool, False))["ok"] is False and health(Stub(spool, True))["ok"] is True
    server = serve(Stub(spool, False), "127.0.0.1", 0)
    try:
        base = "http://127.0.0.1:%d" % server.server_address[1]
        assert "linkseal_relay_broker_connected 0" in urllib.request.urlopen(base + "/metrics").read().decode()
        try:
            urllib.request.urlopen(base + "/health")
            raise AssertionError("an unhealthy relay answered 200")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503 and json.loads(exc.read())["broker_connected"] is False
    finally:
        server.shutdown()
        server.server_close()
