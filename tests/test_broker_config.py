"""`hub broker-config` run by a real Mosquitto: devices publish only as themselves, the hub only reads."""

import queue

import paho.mqtt.client as mqtt
import pytest

from agent import Sealer, topic_for
from hub.keys.broker_config import write_broker_config
from hub.keys.keyfile import HUB_MQTT_USER, KeyFile
from hub.keys.pki import init_ca, issue
from tools.services import HubProcess, Mosquitto, free_port, stored_report, wait_for


def client(broker, name, username=None, password=None, tls_files=None, client_id=None, persistent=False,
           on_message=None):
    """A connected paho client; raises ConnectionRefusedError when the broker says no.
    Its session_present attribute is what the CONNACK said."""
    refused = queue.Queue()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"test-{name}",
                    clean_session=not persistent)

    def on_connect(cl, userdata, flags, rc, properties):
        cl.session_present = bool(flags.session_present)
        refused.put(rc)

    c.on_connect = on_connect
    c.on_message = on_message
    c.on_disconnect = lambda *args: refused.put(None)  # dropped before any CONNACK (TLS refused)
    if username:
        c.username_pw_set(username, password)
    if tls_files:
        c.tls_set(**tls_files)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    rc = refused.get(timeout=10)
    if rc is None or rc.is_failure:
        c.loop_stop()
        raise ConnectionRefusedError(str(rc))
    return c


class Listener:
    """The hub account's view: every message the broker lets it read, in order."""

    def __init__(self, c):
        self.received = queue.Queue()
        subscribed = queue.Queue()
        c.on_message = lambda cl, u, m: self.received.put((m.topic, m.payload))
        c.on_subscribe = lambda *a: subscribed.put(True)
        c.subscribe("linkseal/v1/#", qos=1)
        subscribed.get(timeout=10)

    def next(self):
        return self.received.get(timeout=10)


def publish_then_marker(c, topic, payload, marker_topic):
    """Publish, then a marker the listener is allowed to see: one client's messages stay in order."""
    c.publish(topic, payload, qos=1).wait_for_publish(10)
    c.publish(marker_topic, b"marker", qos=1).wait_for_publish(10)


@pytest.fixture
def keyfile(tmp_path):
    keys = KeyFile.create(tmp_path / "hub.keys", b"test passphrase")
    for device in ("pump-a", "pump-b", "pump-c"):
        keys.provision(device, "wifi")
    keys.revoke("pump-c")
    return keys


def start_broker(tmp_path, files, port, tls=False):
    broker_dir = tmp_path / "broker-run"
    broker_dir.mkdir(exist_ok=True)
    return Mosquitto.from_config(broker_dir, port, files["conf"].read_text(), tls=tls).start()


def listening_addresses(port: int) -> set:
    """The local addresses something listens on at this TCP port (ss, from iproute2)."""
    import subprocess

    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return {line.split()[3].rsplit(":", 1)[0] for line in out.splitlines()}


def test_password_accounts_and_acl(tmp_path, keyfile):
    port = free_port()
    files = write_broker_config(keyfile, tmp_path / "broker", port=port, data_dir=tmp_path)
    assert "message_size_limit 1500" in files["conf"].read_text()
    broker = start_broker(tmp_path, files, port)
    try:
        # Plain MQTT carries passwords in clear: the listener is on loopback only.
        assert listening_addresses(port) == {"127.0.0.1"}
        hub = client(broker, "hub", HUB_MQTT_USER, files["hub_password"].read_text().strip())
        listener = Listener(hub)
        a = client(broker, "a", "pump-a", keyfile.mqtt_password("pump-a"))
        mine, marker = topic_for("pump-a"), "linkseal/v1/pump-a/status"
        publish_then_marker(a, mine, b"own topic", marker)
        assert listener.next() == (mine, b"own topic")
        assert listener.next() == (marker, b"marker")
        publish_then_marker(a, topic_for("pump-b"), b"speaking for pump-b", marker)
        assert listener.next() == (marker, b"marker")  # the forged topic never reached the hub
        # The broker routes an allowed message before it acknowledges it, so had the hub's been
        # allowed, the listener would see it before b's below.
        hub.publish(topic_for("pump-a"), b"the hub publishing", qos=1).wait_for_publish(10)
        b = client(broker, "b", "pump-b", keyfile.mqtt_password("pump-b"))
        publish_then_marker(b, topic_for("pump-b"), b"b's own", "linkseal/v1/pump-b/status")
        assert listener.next() == (topic_for("pump-b"), b"b's own")  # nothing from the hub before it
        with pytest.raises(ConnectionRefusedError):
            client(broker, "anonymous")
        with pytest.raises(ConnectionRefusedError):
            client(broker, "revoked", "pump-c", keyfile.mqtt_password("pump-c"))
        with pytest.raises(ConnectionRefusedError):
            client(broker, "wrong", "pump-a", "not-the-password")
        for c in (hub, a, b):
            c.disconnect()
            c.loop_stop()
    finally:
        broker.stop()


def test_hub_and_devices_over_mutual_tls(tmp_path, keyfile):
    ca_dir = tmp_path / "ca"
    init_ca(ca_dir)
    certs = tmp_path / "certs"
    issue(ca_dir, HUB_MQTT_USER, certs, "hub")
    for device in ("pump-a", "pump-b", "pump-c"):
        issue(ca_dir, device, certs, device)
    port = free_port()
    files = write_broker_config(keyfile, tmp_path / "broker", port=port, tls=True, ca_dir=ca_dir, data_dir=tmp_path)
    broker = start_broker(tmp_path, files, port, tls=True)
    ca = str(ca_dir / "ca.pem")
    hub = HubProcess(broker, keyfile.path, tmp_path / "hub.db", tmp_path / "hub.log", "--ca-file", ca,
                     "--cert-file", certs / "hub.pem", "--key-file", certs / "hub-key.pem",
                     env={"LINKSEAL_PASSPHRASE": "test passphrase"}).start()
    try:
        hub.wait_connected()
        a = client(broker, "a", tls_files={"ca_certs": ca, "certfile": str(certs / "pump-a.pem"),
                                           "keyfile": str(certs / "pump-a-key.pem")})
        sealer = Sealer("pump-a", bytes.fromhex(keyfile.device_config("pump-a")["key"]), epoch=1)
        for i in range(5):
            a.publish(topic_for("pump-a"), sealer.seal(b"%d" % i), qos=1).wait_for_publish(10)
        a.publish(topic_for("pump-b"), sealer.seal(b"as pump-b"), qos=1).wait_for_publish(10)
        # pump-c is revoked: its certificate still opens a TLS session, the ACL denies it every topic.
        c = client(broker, "c", tls_files={"ca_certs": ca, "certfile": str(certs / "pump-c.pem"),
                                           "keyfile": str(certs / "pump-c-key.pem")})
        c_key = bytes.fromhex(keyfile.device_config("pump-c")["key"])
        c.publish(topic_for("pump-c"), Sealer("pump-c", c_key).seal(b"still here"), qos=1).wait_for_publish(10)
        a.publish(topic_for("pump-a"), sealer.seal(b"last"), qos=1).wait_for_publish(10)
        wait_for(lambda: stored_report(hub.db)["links"].get("wifi", {}).get("valid") == 6, 30, "pump-a's frames")
        report = stored_report(hub.db)
        assert "pump-b" not in report["devices"]  # the broker dropped the frame on pump-b's topic
        assert "pump-c" not in report["devices"]  # and the revoked device's: the hub never saw it
        with pytest.raises(ConnectionRefusedError):
            client(broker, "no-cert", tls_files={"ca_certs": ca})
        for connected in (a, c):
            connected.disconnect()
            connected.loop_stop()
    finally:
        hub.stop()
        broker.stop()


def test_forward_here_lets_the_hub_write_verified_records_and_no_device_touch_them(tmp_path, keyfile):
    from hub.keys.keyfile import CONSUMER_MQTT_USER, FORWARDER_MQTT_USER
    from hub.service.delivery.sinks import largest_verified_message

    port = free_port()
    files = write_broker_config(keyfile, tmp_path / "broker", port=port, data_dir=tmp_path,
                                forward_here=largest_verified_message())
    broker = start_broker(tmp_path, files, port)
    try:
        consumer = client(broker, "consumer", CONSUMER_MQTT_USER, files["consumer_password"].read_text().strip())
        seen, subscribed = queue.Queue(), queue.Queue()
        consumer.on_message = lambda cl, u, m: seen.put((m.topic, m.payload))
        consumer.on_subscribe = lambda *a: subscribed.put(True)
        consumer.subscribe("linkseal/verified/#", qos=1)
        subscribed.get(timeout=10)
        device = client(broker, "a", "pump-a", keyfile.mqtt_password("pump-a"))
        device_seen = queue.Queue()
        device.on_message = lambda cl, u, m: device_seen.put(m.topic)
        device.subscribe("linkseal/verified/#", qos=1)
        hub = client(broker, "hub", HUB_MQTT_USER, files["hub_password"].read_text().strip())
        forwarder = client(broker, "forwarder", FORWARDER_MQTT_USER, files["forwarder_password"].read_text().strip())
        # A device's and the hub's reading account's attempts first, then the sink's record: the
        # consumer must see only the sink's.
        device.publish("linkseal/verified/pump-a", b"forged by a device", qos=1).wait_for_publish(10)
        hub.publish("linkseal/verified/pump-a", b"from the reading account", qos=1).wait_for_publish(10)
        forwarder.publish("linkseal/verified/pump-a", b"from the hub", qos=1).wait_for_publish(10)
        assert seen.get(timeout=10) == ("linkseal/verified/pump-a", b"from the hub")
        assert seen.empty() and device_seen.empty()  # the device could neither write nor read it
        for c in (consumer, device, hub, forwarder):
            c.disconnect()
            c.loop_stop()
    finally:
        broker.stop()
    assert "topic write linkseal/verified/#" not in write_broker_config(keyfile, tmp_path / "plain", port=port,
                                                                         data_dir=tmp_path)["acl"].read_text()


def test_no_login_takes_the_hubs_session_or_another_devices(tmp_path, keyfile):
    """Client ids are bound to accounts: a device's login that asks for the hub's client id (or
    the hub's account name) gets its own session, never the hub's with the records queued in
    it; nor can it knock another device off by taking its id."""
    port = free_port()
    files = write_broker_config(keyfile, tmp_path / "broker", port=port, data_dir=tmp_path)
    broker = start_broker(tmp_path, files, port)
    hub_password = files["hub_password"].read_text().strip()
    try:
        hub = client(broker, "hub", HUB_MQTT_USER, hub_password, client_id="linkseal-hub", persistent=True)
        Listener(hub)
        hub.disconnect()
        hub.loop_stop()
        a = client(broker, "a", "pump-a", keyfile.mqtt_password("pump-a"))
        sealer = Sealer("pump-a", bytes.fromhex(keyfile.device_config("pump-a")["key"]), epoch=1)
        queued = [sealer.seal(b"%d" % i) for i in range(5)]
        for frame in queued:  # queued for the hub's persistent session while it is away
            a.publish(topic_for("pump-a"), frame, qos=1).wait_for_publish(10)
        for wanted in ("linkseal-hub", HUB_MQTT_USER):
            clean = client(broker, "clean", "pump-b", keyfile.mqtt_password("pump-b"))  # no session of pump-b's left
            clean.disconnect()
            clean.loop_stop()
            thief = client(broker, "thief", "pump-b", keyfile.mqtt_password("pump-b"), client_id=wanted,
                           persistent=True)
            assert not thief.session_present, f"a device's login took the hub's session by asking for {wanted!r}"
            thief.disconnect()
            thief.loop_stop()
        # The device asks for pump-a's client id while pump-a is connected: pump-a stays on.
        dropped = queue.Queue()
        a.on_disconnect = lambda *args: dropped.put(True)
        b = client(broker, "b", "pump-b", keyfile.mqtt_password("pump-b"), client_id="test-a")
        a.publish(topic_for("pump-a"), sealer.seal(b"after"), qos=1).wait_for_publish(10)
        assert dropped.empty(), "another device's login knocked pump-a off the broker"
        # The hub comes back to its session and finds every record queued while it was away.
        got = queue.Queue()
        hub = client(broker, "hub-again", HUB_MQTT_USER, hub_password, client_id="linkseal-hub", persistent=True,
                     on_message=lambda cl, u, m: got.put(m.payload))
        assert hub.session_present
        assert [got.get(timeout=10) for _ in range(6)][:5] == queued
        for c in (a, b, hub):
            c.disconnect()
            c.loop_stop()
    finally:
        broker.stop()


def test_the_hub_refuses_a_broker_that_does_not_bind_client_ids(tmp_path, keyfile):
    """`hub run` with the generated hub account probes the broker first: against a generated
    configuration without the binding it exits 2 saying why; against today's it runs."""
    port = free_port()
    files = write_broker_config(keyfile, tmp_path / "broker", port=port, data_dir=tmp_path)
    conf = files["conf"].read_text()
    assert "use_username_as_clientid true" in conf
    (tmp_path / "old.conf").write_text(conf.replace("use_username_as_clientid true\n", ""))
    unbound = start_broker(tmp_path, {"conf": tmp_path / "old.conf"}, port)
    env = {"LINKSEAL_PASSPHRASE": "test passphrase"}
    login = ("--username", HUB_MQTT_USER, "--password-file", files["hub_password"])
    try:
        hub = HubProcess(unbound, keyfile.path, tmp_path / "hub.db", tmp_path / "hub.log", *login, env=env).start()
        assert hub.wait() == 2
        assert "does not bind client ids to accounts" in hub.log.read_text()
        assert "Traceback" not in hub.log.read_text()
    finally:
        unbound.stop()
    broker = start_broker(tmp_path, files, port)
    try:
        hub = HubProcess(broker, keyfile.path, tmp_path / "hub.db", tmp_path / "hub2.log", *login, env=env).start()
        hub.wait_connected()
        assert any(e["event"] == "client_ids_bound" for e in hub.events())
    finally:
        hub.stop()
        broker.stop()


def test_a_relay_account_speaks_only_for_the_devices_it_carries(tmp_path, keyfile):
    keyfile.provision("plc-7", "rs485")
    keyfile.provision("plc-8", "rs485")
    port = free_port()
    files = write_broker_config(keyfile, tmp_path / "broker", port=port, data_dir=tmp_path,
                                relays={"hall-2": ["plc-7"], "line-1": None})
    acl = files["acl"].read_text()
    assert "user linkseal/relay/line-1\ntopic write linkseal/v1/plc-7/rec" in acl and "linkseal/v1/plc-8/rec" in acl
    assert "pump-a" not in acl.split("user linkseal/relay/line-1")[1].split("\n\n")[0]  # wifi devices: not its own
    broker = start_broker(tmp_path, files, port)
    try:
        hub = client(broker, "hub", HUB_MQTT_USER, files["hub_password"].read_text().strip())
        listener = Listener(hub)
        relay = client(broker, "relay", "linkseal/relay/hall-2", files["relay_hall-2_password"].read_text().strip())
        marker = "linkseal/v1/plc-7/status"
        publish_then_marker(relay, topic_for("plc-7"), b"carried", marker)
        assert listener.next() == (topic_for("plc-7"), b"carried")
        assert listener.next() == (marker, b"marker")
        for other in ("plc-8", "pump-a"):  # a device it does not carry, a WiFi device
            publish_then_marker(relay, topic_for(other), b"speaking for another", marker)
            assert listener.next() == (marker, b"marker")
        for c in (hub, relay):
            c.disconnect()
            c.loop_stop()
    finally:
        broker.stop()
    with pytest.raises(ValueError, match="no active device ghost"):
        write_broker_config(keyfile, tmp_path / "again", port=port, relays={"r": ["ghost"]})
