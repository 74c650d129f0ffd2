"""Liveness in `hub run`: real agents (`agent run`) through a real Mosquitto to the hub.

A stopped process (SIGSTOP: its connection stays up, so no last will) falls silent and comes
back; a clean stop is offline, never silent; a hub restart, a broker restart and storage the
hub cannot write do not make anyone look silent or flooding.
"""

import signal
import sqlite3
import subprocess
import urllib.request

from hub.keys.keyfile import KeyFile, write_private_json
from tools.services import HubProcess, Subscriber, free_port, stored_report, wait_for

from .test_agent_run import LINKSEAL

HEARTBEAT_S = 2.0  # the agents' period: silent after 6 s of nothing


def start_agent(tmp_path, broker, config, name):
    log = open(tmp_path / f"{name}.log", "w")
    return subprocess.Popen([str(LINKSEAL), "agent", "run", "--config", str(config), "--broker", broker.url,
                             "--state-dir", str(tmp_path / f"state-{name}"), "--log-json",
                             "--heartbeat", str(HEARTBEAT_S)],
                            stdin=subprocess.PIPE, stdout=log, stderr=log)


def watch_events(db, device=None):
    kinds = ("silent", "back", "behaviour_alarm", "behaviour_clear")
    return [(e["kind"], e["device"]) for e in stored_report(db)["events"]
            if e["kind"] in kinds and device in (None, e["device"])]


def liveness(db, device):
    return stored_report(db)["devices"].get(device, {}).get("liveness")


def heartbeats(subscriber, device):
    return sum(topic == f"linkseal/v1/{device}/status" for topic, _ in subscriber.received())


def metric(port, line_start):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(line_start))


def test_silent_back_offline_and_no_false_silence_across_outages(tmp_path, broker):
    keyfile = KeyFile.create(tmp_path / "hub.keys")
    configs = {}
    for device in ("pump-1", "pump-2", "pump-3"):
        configs[device] = tmp_path / f"{device}.json"
        write_private_json(configs[device], keyfile.provision(device, "wifi"))
    hub_toml = tmp_path / "hub.toml"
    hub_toml.write_text("[watch]\nwindow_s = 10\n")
    port = free_port()
    db = tmp_path / "hub.db"
    hub = HubProcess(broker, keyfile.path, db, tmp_path / "hub.log", "--config", hub_toml,
                     "--metrics", f"127.0.0.1:{port}").start()
    hub.wait_connected()
    agents = {d: start_agent(tmp_path, broker, configs[d], d) for d in configs}
    seen = Subscriber(broker.port, "linkseal/v1/+/status")
    try:
        wait_for(lambda: all(liveness(db, d) == "online" for d in agents), 60, "every agent online")

        # A process that stops answering keeps its TCP connection: no last will, just nothing.
        agents["pump-1"].send_signal(signal.SIGSTOP)
        wait_for(lambda: ("silent", "pump-1") in watch_events(db), 60, "pump-1 silent")
        event = next(e for e in stored_report(db)["events"] if e["kind"] == "silent")
        assert "3 heartbeat periods of 2 s" in event["reason"]
        assert metric(port, 'linkseal_silent_devices{link="wifi"}') == 1.0
        agents["pump-1"].send_signal(signal.SIGCONT)
        wait_for(lambda: ("back", "pump-1") in watch_events(db), 60, "pump-1 back")
        wait_for(lambda: metric(port, 'linkseal_silent_devices{link="wifi"}') == 0.0, 30, "the metric back to 0")

        # A clean stop sends a death: offline, and it stays so, never silent.
        agents["pump-2"].stdin.close()
        agents["pump-2"].send_signal(signal.SIGTERM)
        assert agents["pump-2"].wait(30) == 0
        wait_for(lambda: liveness(db, "pump-2") == "offline", 30, "pump-2 offline")

        # The hub stopped for longer than 3 heartbeat periods while pump-1 and pump-3 go on.
        hub.signal(signal.SIGTERM)
        assert hub.wait() == 0
        before = heartbeats(seen, "pump-3")
        wait_for(lambda: heartbeats(seen, "pump-3") >= before + 4, 60, "8 s of heartbeats while the hub is down")
        hub = HubProcess(broker, keyfile.path, db, tmp_path / "hub2.log", "--config", hub_toml).start()
        hub.wait_connected()
        settled(seen, 3)

        # The broker restarted: everyone reconnects (a birth each), the hub too.
        broker.stop()
        broker.start()
        wait_for(lambda: sum(e["event"] == "subscribed" for e in hub.events()) >= 2, 60, "the hub to reconnect")
        seen.close()
        seen = Subscriber(broker.port, "linkseal/v1/+/status")
        settled(seen, 3)

        # Storage the hub cannot write (another process holds the lock) for 8 s: it stops taking messages in.
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        before = heartbeats(seen, "pump-3")
        wait_for(lambda: any(e["event"] == "storage_locked" for e in hub.events()), 60, "the hub to meet the lock")
        wait_for(lambda: heartbeats(seen, "pump-3") >= before + 4, 60, "8 s of heartbeats while storage is locked")
        holder.execute("ROLLBACK")
        holder.close()
        wait_for(lambda: any(e["event"] == "storage_recovered" for e in hub.events()), 60, "storage back")
        settled(seen, 3)
        # Read before the agents are killed: their wills would make them offline.
        events, report = watch_events(db), stored_report(db)
    finally:
        seen.close()
        hub.stop()
        for agent in agents.values():
            if agent.poll() is None:
                agent.send_signal(signal.SIGCONT)
                agent.kill()
                agent.wait(10)
    # Only pump-1's real silence: no outage of the hub's own made anyone silent or flooding.
    assert events == [("silent", "pump-1"), ("back", "pump-1")]
    assert report["devices"]["pump-2"]["liveness"] == "offline"
    assert report["devices"]["pump-3"]["liveness"] == "online" and report["devices"]["pump-3"]["liveness_since"]


def settled(subscriber, count):
    """Wait until the hub has had `count` more heartbeats of pump-3 (and of time) to judge by."""
    before = heartbeats(subscriber, "pump-3")
    wait_for(lambda: heartbeats(subscriber, "pump-3") >= before + count, 60, f"{count} more heartbeats")
