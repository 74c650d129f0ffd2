"""The relay's MQTT connection: one QoS 1 publish at a time, done when the broker's PUBACK came.

The client id is `linkseal-relay-<name>`; the account is the relay's own (docs/relay.md: what
it may publish). paho reconnects by itself (1-30 s); publish() reports failure, never raises,
so the caller keeps the frame and tries again.
"""

import threading

import paho.mqtt.client as mqtt


class Publisher:
    def __init__(self, broker, name: str, log, ack_timeout_s: float = 10.0):
        self.log = log
        self.where = f"{broker.host}:{broker.port}"
        self.ack_timeout_s = ack_timeout_s
        self.connected = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"linkseal-relay-{name}")
        if broker.tls:
            self.client.tls_set(ca_certs=broker.ca_file, certfile=broker.cert_file, keyfile=broker.key_file)
        if broker.username:
            self.client.username_pw_set(broker.username, broker.password)
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.host, self.port = broker.host, broker.port
        self.failures = 0  # publishes that got no PUBACK (the broker went away): the frame was kept

    def start(self) -> None:
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self.log("connect_refused", broker=self.where, reason=str(reason_code))
            return
        self.connected.set()
        self.log("connected", broker=self.where)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        if self.connected.is_set():
            self.log("disconnected", broker=self.where, reason=str(reason_code))
        self.connected.clear()

    def publish(self, topic: str, payload: bytes, stop: threading.Event) -> bool:
        """True once the broker acknowledged the frame; False when it could not (not connected
        within a second, stopped, or no PUBACK in time)."""
        if not self.connected.wait(1.0) or stop.is_set():
            return False
        info = self.client.publish(topic, payload, qos=1)
        try:
            info.wait_for_publish(self.ack_timeout_s)
        except (RuntimeError, ValueError):
            pass
        if info.is_published():
            return True
        self.failures += 1
        return False

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
