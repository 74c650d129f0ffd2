"""`linkseal sim proxy` between a real publisher and a real Mosquitto, with the hub behind it."""

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import paho.mqtt.client as mqtt

from agent import Sealer, topic_for
from agent.sealer import status_topic_for
from agent.status import BIRTH, status_payload
from hub.keys.keyfile import KeyFile
from tools.services import HubProcess, frames_seen, stored_report, wait_for

LINKSEAL = Path(sys.executable).parent / "linkseal"
COUNTERS = ("received", "valid", "lost", "duplicate", "reordered", "corrupt", "forged")


def start_proxy(broker, trace, *settings):
    proxy = subprocess.Popen([str(LINKSEAL), "sim", "proxy", "--listen", "127.0.0.1:0", "--upstream",
                              f"127.0.0.1:{broker.port}", "--profile", "wifi", "--trace", str(trace), "--seed", "3",
                              *settings], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proxy.stdout.readline()
    assert line.startswith("listening on"), line + proxy.stderr.read()
    port = int(line.split()[2].rstrip(",").rsplit(":", 1)[1])
    return proxy, port


def test_proxy_faults_match_its_trace_and_the_hub(tmp_path, broker):
    keyfile = KeyFile.create(tmp_path / "hub.keys")
    sealer = Sealer("pump-1", bytes.fromhex(keyfile.provision("pump-1", "wifi")["key"]), epoch=1)
    hub = HubProcess(broker, keyfile.path, tmp_path / "hub.db", tmp_path / "hub.log").start()
    trace = tmp_path / "proxy.trace.jsonl"
    proxy, port = start_proxy(broker, trace, "--set", "loss=bernoulli", "--set", "loss_rate=0.2", "--set",
                              "burst_rate=0.05", "--set", "duplicate=0.05", "--set", "delay_ms=0", "--set",
                              "jitter_ms=0")
    try:
        hub.wait_connected()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="device-behind-proxy")
        client.connect("127.0.0.1", port)
        client.loop_start()
        birth = sealer.seal_status(status_payload(BIRTH, sealer, 0, 0))  # status messages cross the proxy too
        client.publish(status_topic_for("pump-1"), birth, qos=1).wait_for_publish(30)
        for info in [client.publish(topic_for("pump-1"), sealer.seal(b"%d" % i), qos=1) for i in range(300)]:
            info.wait_for_publish(30)  # a dropped frame is acknowledged by the proxy: nothing hangs
        client.disconnect()
        client.loop_stop()
        lines = [json.loads(line) for line in trace.read_text().splitlines()[1:]]
        assert len(lines) == 301 and lines[0]["topic"] == status_topic_for("pump-1")
        lines = lines[1:]
        arriving = sum(len(line["fate"]["delays"]) for line in lines)
        wait_for(lambda: frames_seen(hub.db) == arriving, 30, "every frame the proxy let through")
    finally:
        proxy.send_signal(signal.SIGTERM)
        assert proxy.wait(30) == 0
        hub.stop()
    lost = sum(line["fate"]["lost"] for line in lines)
    damaged = sum(bool(line["fate"]["flips"]) for line in lines if not line["fate"]["lost"])
    assert 30 < lost < 90 and damaged > 3  # about 20% and 4%
    live = stored_report(hub.db)["links"]["wifi"]
    replayed = subprocess.run([str(LINKSEAL), "sim", "replay", str(trace), "--keys", str(keyfile.path),
                               "--insecure-plaintext", "--no-broker", "--out", str(tmp_path / "replay")],
                              capture_output=True, text=True, timeout=120)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "Left out 1 status messages" in replayed.stdout
    offline = json.loads((tmp_path / "replay" / "report.json").read_text())["hub"]["links"]["wifi"]
    assert {k: live[k] for k in COUNTERS} == {k: offline[k] for k in COUNTERS}
    assert live["corrupt"] == damaged and live["forged"] == 0


def test_outage_refuses_connections(tmp_path, broker):
    proxy, port = start_proxy(broker, tmp_path / "t.jsonl", "--outage", "0:60")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            try:
                answer = sock.recv(10)
            except ConnectionResetError:
                answer = b""
            assert answer == b""  # closed at once: the link is down, nothing reaches the broker
    finally:
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(30)
