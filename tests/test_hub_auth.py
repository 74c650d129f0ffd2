"""`hub run` against brokers that demand mutual TLS, or a user name and password."""

import datetime
import ipaddress
import subprocess

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent import Sealer, topic_for
from hub.keys.keyfile import KeyFile
from tools.services import HubProcess, Mosquitto, stored_report, wait_for


def _cert(subject, issuer_name, issuer_key, public_key, ca=False, ip=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer_name).public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                                        critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(directory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate for the hub, as PEM files."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "linkseal test CA")])
    ca = _cert("linkseal test CA", ca_name, ca_key, ca_key.public_key(), ca=True)
    files = {"ca.pem": ca.public_bytes(serialization.Encoding.PEM)}
    for name, ip in (("server", "127.0.0.1"), ("hub", None)):
        key = ec.generate_private_key(ec.SECP256R1())
        files[f"{name}.pem"] = _cert(name, ca_name, ca_key, key.public_key(), ip=ip).public_bytes(
            serialization.Encoding.PEM)
        files[f"{name}-key.pem"] = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption())
    for name, data in files.items():
        (directory / name).write_bytes(data)
        (directory / name).chmod(0o600)
    return {name: directory / name for name in files}




def run_through(tmp_path, broker, hub_args, publisher, env=None):
    keyfile = KeyFile.create(tmp_path / "hub.keys")
    sealer = Sealer("pump-1", bytes.fromhex(keyfile.provision("pump-1", "wifi")["key"]), epoch=1)
    hub = HubProcess(broker, keyfile.path, tmp_path / "hub.db", tmp_path / "hub.log", *hub_args, env=env).start()
    try:
        hub.wait_connected()
        publisher.connect("127.0.0.1", broker.port)
        publisher.loop_start()
        for info in [publisher.publish(topic_for("pump-1"), sealer.seal(b"%d" % i), qos=1) for i in range(20)]:
            info.wait_for_publish(30)
        publisher.disconnect()
        publisher.loop_stop()
        wait_for(lambda: stored_report(hub.db)["links"].get("wifi", {}).get("valid") == 20, 30, "20 frames")
    finally:
        hub.stop()
    return hub


def test_mutual_tls(tmp_path):
    import paho.mqtt.client as mqtt

    pki = make_pki(tmp_path)
    broker_dir = tmp_path / "broker"
    broker_dir.mkdir()
    broker = Mosquitto(broker_dir, tls=True, auth=(
        f"cafile {pki['ca.pem']}", f"certfile {pki['server.pem']}", f"keyfile {pki['server-key.pem']}",
        "require_certificate true", "use_identity_as_username true")).start_on_a_free_port()
    try:
        publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-publisher")
        publisher.tls_set(ca_certs=str(pki["ca.pem"]), certfile=str(pki["hub.pem"]), keyfile=str(pki["hub-key.pem"]))
        hub = run_through(tmp_path, broker, ["--ca-file", pki["ca.pem"], "--cert-file", pki["hub.pem"],
                                             "--key-file", pki["hub-key.pem"]], publisher)
        assert '"tls": true' in hub.log.read_text()
        # Without a client certificate the broker refuses the hub, which keeps retrying.
        bare = HubProcess(broker, tmp_path / "hub.keys", tmp_path / "other.db", tmp_path / "bare.log",
                          "--ca-file", pki["ca.pem"]).start()
        try:
            wait_for(lambda: any(e["event"] == "connect_failed" for e in bare.events()), 30, "a refused connection")
            assert bare.process.poll() is None
        finally:
            bare.stop()
    finally:
        broker.stop()


def test_username_and_password_from_the_environment(tmp_path):
    import paho.mqtt.client as mqtt

    passwords = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "hub", "hub-secret"], check=True)
    subprocess.run(["mosquitto_passwd", "-b", str(passwords), "device", "device-secret"], check=True)
    broker_dir = tmp_path / "broker"
    broker_dir.mkdir()
    broker = Mosquitto(broker_dir, auth=("allow_anonymous false", f"password_file {passwords}")).start_on_a_free_port()
    try:
        publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-publisher")
        publisher.username_pw_set("device", "device-secret")
        hub = run_through(tmp_path, broker, ["--username", "hub"], publisher,
                          env={"LINKSEAL_MQTT_PASSWORD": "hub-secret"})
        assert "hub-secret" not in hub.log.read_text()
    finally:
        broker.stop()
