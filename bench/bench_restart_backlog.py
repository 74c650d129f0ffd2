"""restart_backlog_valid_fraction: a device at half its rate limit (50 frames/s against the
default 100/s, burst 1,000) keeps sending through a 60 s hub restart; the broker keeps the
backlog and the restarted hub drains it at once. The fraction of the device's records that
end up valid (target 1.0: none `rate_limited`, none lost)."""

import json
import tempfile
from pathlib import Path

from agent import Sealer, topic_for
from hub.keys.keyfile import KeyFile
from tools.services import HubProcess, Mosquitto, frames_seen, publish_paced, stored_report, wait_for

RATE = 50  # frames per second: half the default limit
RESTART_S = 60


def main():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        keyfile = KeyFile.create(tmp / "hub.keys")
        sealer = Sealer("pump-1", bytes.fromhex(keyfile.provision("pump-1", "wifi")["key"]), link="wifi", epoch=1)
        stream = [(topic_for("pump-1"), sealer.seal(b'{"hr": %d}' % i)) for i in range(RATE * (RESTART_S + 5))]
        before, during = stream[: RATE * 5], stream[RATE * 5 :]
        (tmp / "broker").mkdir()
        broker = Mosquitto(tmp / "broker").start_on_a_free_port()
        db = tmp / "hub.db"
        try:
            hub = HubProcess(broker, keyfile.path, db, tmp / "hub.log").start()
            try:
                hub.wait_connected()
                publish_paced(broker.port, before, RATE)
                wait_for(lambda: frames_seen(db) == len(before), 60, "the frames before the restart")
            finally:
                hub.stop()
            publish_paced(broker.port, during, RATE)  # the hub is down for these 60 s
            hub = HubProcess(broker, keyfile.path, db, tmp / "hub.log").start()
            try:
                wait_for(lambda: frames_seen(db) == len(stream), 120, "the backlog")
            finally:
                hub.stop()
        finally:
            broker.stop()
        device = stored_report(db)["devices"]["pump-1"]
    print(json.dumps({"figure": "restart_backlog_valid_fraction", "value": round(device["valid"] / len(stream), 4),
                      "target": 1.0, "rate_limited": device["rate_limited"], "lost": device["lost"],
                      "frames": len(stream), "restart_s": RESTART_S, "rate": RATE}))


if __name__ == "__main__":
    main()
