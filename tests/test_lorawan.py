"""`hub run --lorawan`: records through LoRaWAN network servers' MQTT integrations, on a real
Mosquitto standing in for the servers' brokers. ChirpStack v4 uplink events made with its own
classes (`chirpstack-api`: the JSON mapping, zero fields left out, and binary protobuf), The
Things Stack v3 JSON by its documented shape (unknown fields included); bad events counted,
never a stop; the hub's counts equal `hub verify` on the same frames."""

import json
import subprocess

from agent import Sealer
from agent.sealer import topic_for
from shared.capture import encode_line
from simulator.lorawan.network import chirpstack_event, ttn_event
from tools.services import LINKSEAL, HubProcess, frames_seen, publish, stored_report, wait_for

EUI_CHIRP, EUI_TTN, EUI_STRANGER = "0102030405060708", "a1b2c3d4e5f60718", "ffffffffffffffff"


def test_uplinks_through_chirpstack_and_ttn_count_as_hub_verify_says(tmp_path, broker, keys):
    compact = keys.provision("field-tx-3", "lora", form="compact", dev_eui=EUI_CHIRP)
    full = keys.provision("field-tx-4", "lora", dev_eui=EUI_TTN, form="full")
    c = Sealer("field-tx-3", bytes.fromhex(compact["key"]), link="lora", epoch=1, tag_len=8, compact=True)
    f = Sealer("field-tx-4", bytes.fromhex(full["key"]), link="lora", epoch=1)
    c_frames = [c.seal(b"soil=%d" % i) for i in range(40)]
    f_frames = [f.seal(b"t=%d" % i) for i in range(40)]
    chirp_topic, ttn_topic = "application/7/device/%s/event/up" % EUI_CHIRP, "v3/app@ttn/devices/field-tx-4/up"
    messages = []
    for i, frame in enumerate(c_frames):
        if i % 10 == 3:
            continue  # lost in the air
        messages.append((chirp_topic, chirpstack_event(EUI_CHIRP, frame, i, binary=i % 2 == 1,
                                                       gateways=[("gw-1", -101, 7.5), ("gw-2", -115, -3.0)])))
    messages += [(ttn_topic, ttn_event(EUI_TTN, frame, i)) for i, frame in enumerate(f_frames)]
    bad = [
        (chirp_topic, b"{not json"),
        (chirp_topic, json.dumps({"deviceInfo": {"devEui": EUI_CHIRP}, "data": 42}).encode()),  # wrong type
        (chirp_topic, json.dumps({"deviceInfo": {"devEui": EUI_CHIRP}}).encode()),  # no data
        (chirp_topic, chirpstack_event(EUI_CHIRP, b"\x00" * 100_000, 99)),  # huge
        (chirp_topic, chirpstack_event(EUI_STRANGER, c_frames[0], 1)),  # unknown DevEUI
        (chirp_topic, chirpstack_event(EUI_CHIRP, f_frames[0], 50)),  # full form on a compact device
        (ttn_topic, json.dumps({"end_device_ids": {"dev_eui": EUI_TTN}, "uplink_message": {"frm_payload": "%%"}})
         .encode()),  # not base64
    ]
    hub = HubProcess(broker, keys.path, tmp_path / "hub.db", tmp_path / "hub.log", "--lorawan",
                     f"chirpstack+mqtt://127.0.0.1:{broker.port}", "--lorawan", f"ttn+mqtt://127.0.0.1:{broker.port}")
    hub.start()
    try:
        hub.wait_connected()
        wait_for(lambda: sum(e["event"] == "lorawan_subscribed" for e in hub.events()) == 2, 30,
                 "both network servers subscribed")
        publish(broker.port, messages + bad)
        wait_for(lambda: frames_seen(hub.db) == len(messages) + len(bad), 60, "every uplink event counted")
        assert hub.process.poll() is None
    finally:
        hub.stop()
    report = stored_report(hub.db)
    assert "Traceback" not in hub.log.read_text()
    # The same frames, as a capture on the devices' own topics, through `hub verify`.
    capture = tmp_path / "capture.jsonl"
    capture.write_text("".join(encode_line(0.0, topic_for("field-tx-3"), frame) + "\n"
                               for i, frame in enumerate(c_frames) if i % 10 != 3)
                       + "".join(encode_line(0.0, topic_for("field-tx-4"), frame) + "\n" for frame in f_frames))
    offline = json.loads(subprocess.run([str(LINKSEAL), "hub", "verify", str(capture), "--keys", str(keys.path),
                                         "--insecure-plaintext", "--json"], capture_output=True, text=True,
                                        timeout=60).stdout)
    counters = ("valid", "lost", "forged", "duplicate", "corrupt")
    for device in ("field-tx-3", "field-tx-4"):
        extra = {"field-tx-3": 3, "field-tx-4": 1}[device]  # the bad events that name a provisioned DevEUI
        assert {k: report["devices"][device][k] for k in counters} == {k: offline["devices"][device][k]
                                                                       for k in counters}, device
        assert report["devices"][device]["malformed"] == offline["devices"][device]["malformed"] + extra
    assert report["devices"]["field-tx-3"]["valid"] == 36 and report["devices"]["field-tx-3"]["lost"] == 4
    # The stranger's DevEUI, and the two events no DevEUI could be read from (not JSON; far too large).
    assert report["unknown_device"] == 3
    events = report["events"]
    assert any(e["kind"] == "unknown_device" and e["device"] == EUI_STRANGER for e in events)
    assert any(e["kind"] == "unknown_device" and e["device"] is None and "not JSON" in e["reason"] for e in events)


def test_a_kill_9_mid_stream_loses_and_doubles_nothing(tmp_path, broker, keys):
    """ChirpStack's events at QoS 1 into the hub's persistent session for the network server:
    acknowledged only after the commit, so a kill -9 and a restart lose nothing and accept
    nothing twice."""
    import signal

    config = keys.provision("field-tx-3", "lora", form="compact", dev_eui=EUI_CHIRP)
    sealer = Sealer("field-tx-3", bytes.fromhex(config["key"]), link="lora", epoch=1, tag_len=8, compact=True)
    topic = "application/7/device/%s/event/up" % EUI_CHIRP
    events = [(topic, chirpstack_event(EUI_CHIRP, sealer.seal(b"%d" % i), i)) for i in range(400)]
    args = ("--lorawan", f"chirpstack+mqtt://127.0.0.1:{broker.port}")
    hub = HubProcess(broker, keys.path, tmp_path / "hub.db", tmp_path / "hub.log", *args).start()
    try:
        wait_for(lambda: any(e["event"] == "lorawan_subscribed" for e in hub.events()), 30, "the subscription")
        publish(broker.port, events[:200])
        wait_for(lambda: frames_seen(hub.db) >= 50, 60, "some events stored")
        hub.signal(signal.SIGKILL)
        hub.wait()
        publish(broker.port, events[200:])  # queued in the hub's session meanwhile
    finally:
        hub.stop()
    again = HubProcess(broker, keys.path, tmp_path / "hub.db", tmp_path / "hub-again.log", *args).start()
    try:
        wait_for(lambda: stored_report(again.db)["devices"].get("field-tx-3", {}).get("valid") == 400, 60,
                 "every record after the restart")
    finally:
        again.stop()
    device = stored_report(again.db)["devices"]["field-tx-3"]
    assert (device["valid"], device["lost"], device["duplicate"]) == (400, 0, 0), device


def test_radio_figures_in_the_report_the_console_and_the_metrics(tmp_path, broker, keys):
    """Uplinks whose fCnt skips (lost after sending) and whose sequence numbers skip where the
    fCnt does not (never sent), heard by two gateways: the stored report, the console's API and
    the metrics say the same."""
    import urllib.request

    config = keys.provision("field-tx-3", "lora", form="compact", dev_eui=EUI_CHIRP)
    sealer = Sealer("field-tx-3", bytes.fromhex(config["key"]), link="lora", epoch=1, tag_len=8, compact=True)
    topic = "application/7/device/%s/event/up" % EUI_CHIRP
    events, f_cnt = [], 0
    for seq in range(60):
        frame = sealer.seal(b"%d" % seq)
        if seq % 10 == 4:
            continue  # sealed, never sent: the fCnt does not move
        if seq % 10 != 7:  # seq 7, 17, ...: sent and lost in the air
            gateways = [("gw-roof", -95, 9.0)] + ([("gw-far", -119, -8.5)] if seq % 3 == 0 else [])
            events.append((topic, chirpstack_event(EUI_CHIRP, frame, f_cnt, gateways=gateways, spreading_factor=10)))
        f_cnt += 1
    hub = HubProcess(broker, keys.path, tmp_path / "hub.db", tmp_path / "hub.log", "--lorawan",
                     f"chirpstack+mqtt://127.0.0.1:{broker.port}", "--console", "127.0.0.1:0", "--metrics",
                     "127.0.0.1:0").start()
    try:
        wait_for(lambda: any(e["event"] == "lorawan_subscribed" for e in hub.events()), 30, "the subscription")
        publish(broker.port, events)
        wait_for(lambda: frames_seen(hub.db) == len(events), 60, "every uplink event counted")
        console = next(e["address"] for e in hub.events() if e["event"] == "console")
        metrics = next(e["metrics"] for e in hub.events() if e["event"] == "started")

        def get(url):
            request = urllib.request.Request(url, headers={"Accept": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.read().decode()

        links = json.loads(get(f"http://{console}/api/v1/links"))["links"]
        device = json.loads(get(f"http://{console}/api/v1/devices/field-tx-3"))["device"]
        scraped = get(f"http://{metrics}/metrics")
    finally:
        hub.stop()
    radio = stored_report(tmp_path / "hub.db")["devices"]["field-tx-3"]["radio"]
    assert (radio["uplinks"], radio["lost_after_transmission"], radio["lost_before_transmission"]) == (48, 6, 6)
    assert radio["gateways"]["gw-roof"] == {"frames": 48, "share": 1.0, "rssi_median": -95, "snr_median": 9.0}
    assert radio["gateways"]["gw-far"]["frames"] == 16 and radio["gateways"]["gw-far"]["snr_median"] == -8.5
    assert radio["spreading_factors"] == {"10": {"frames": 48, "snr_median": 9.0}}
    assert radio["frequencies"] == {"868100000": 48}
    assert device["radio"] == radio and links["lora"]["radio"]["lost_after_transmission"] == 6
    assert 'linkseal_radio_lost_after_transmission_total{link="lora"} 6.0' in scraped
    assert 'linkseal_radio_lost_before_transmission{link="lora"} 6.0' in scraped
    assert 'linkseal_radio_snr_median_db{link="lora",spreading_factor="10"} 9.0' in scraped
