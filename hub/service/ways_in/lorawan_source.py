"""A LoRaWAN network server's MQTT integration as a way into the hub (`hub run --lorawan`).

Each uplink event (hub/core/network_servers.py) becomes the device's record topic and its
frame, and goes into the hub's ingest queue beside the broker's own messages: verified,
committed, and only then acknowledged to the network server's broker (QoS 1 with ChirpStack;
The Things Stack publishes at QoS 0 only, so what its broker drops after the network server
shows as loss). Status messages come on their own fPort (hardware/links/lora.toml), records on
the other. Devices are found by their DevEUI (`keys provision --dev-eui`); an unknown
DevEUI is an unknown device, an event without a readable frame is `malformed` for its device.
"""

import ssl
import threading
import time

import paho.mqtt.client as mqtt

from agent.sealer import status_topic_for, topic_for
from hardware.link_registry import load_links
from hub.core.network_servers import TOPICS, TTN, NotAnUplink, parse_uplink

# What the hub subscribes at: The Things Stack's MQTT server offers QoS 0 only.
QOS = {TTN: 0}


class LorawanSource:
    def __init__(self, server: str, broker, client_id: str, devices_by_eui: dict, put, log, arrival_clock=None):
        """put(item): hands a queue item to the hub's ingest thread (blocking while it is full);
        arrival_clock(topic, payload): the arrival time to give (a replay's), else now."""
        self.server, self.broker, self.log, self.put = server, broker, log, put
        self.arrival_clock = arrival_clock
        self.devices_by_eui = devices_by_eui  # replaced whole on a key reload
        self.where = f"{server} at {broker.host}:{broker.port}"
        self.status_port = load_links()["lora"].ports[1]  # status messages' fPort, records on any other
        qos = QOS.get(server, 1)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=qos == 0,
                                  protocol=mqtt.MQTTv311, manual_ack=True)
        if broker.tls:
            self.client.tls_set(ca_certs=broker.ca_file, certfile=broker.cert_file, keyfile=broker.key_file,
                                cert_reqs=ssl.CERT_REQUIRED)
        if broker.username:
            self.client.username_pw_set(broker.username, broker.password)
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect = lambda c, u, flags, rc, p: self._on_connect(rc, qos)
        self.client.on_subscribe = lambda c, u, mid, codes, p: self._on_subscribe(codes)
        self.client.on_message = self._on_message
        self.subscribed = threading.Event()  # the network server's broker confirmed the subscription

    def _on_subscribe(self, codes) -> None:
        if any(code.is_failure for code in codes):
            self.log("lorawan_subscribe_refused", server=self.where)
            return
        self.log("lorawan_subscribed", server=self.where, topic=TOPICS[self.server])
        self.subscribed.set()

    def _on_connect(self, reason_code, qos) -> None:
        if reason_code.is_failure:
            self.log("lorawan_refused", server=self.where, reason=str(reason_code))
            return
        self.client.subscribe(TOPICS[self.server], qos)
        self.log("lorawan_connected", server=self.where)

    def start(self) -> None:
        self.client.connect_async(self.broker.host, self.broker.port, 60)
        self.client.loop_start()  # its own network thread; paho reconnects with backoff

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, client, userdata, message) -> None:
        t = time.time() if self.arrival_clock is None else self.arrival_clock(message.topic, message.payload)
        topic, data, refused, radio = ingest_item(self.server, message.payload, self.devices_by_eui, self.status_port)
        self.put((topic, data, t, message.mid, message.qos, message.dup, client, refused, radio))


def ingest_item(server: str, payload: bytes, devices_by_eui: dict, status_port: int) -> tuple:
    """(topic, frame, refused, radio) for Ingest.handle from one integration message: the
    device's record or status topic (by fPort), or the reason there is no frame in it."""
    try:
        uplink = parse_uplink(server, payload)
    except NotAnUplink as exc:
        device = devices_by_eui.get(exc.dev_eui) if exc.dev_eui else None
        topic = topic_for(device) if device else f"lorawan/{exc.dev_eui or 'unreadable'}"
        return topic, b"", (f"{server} uplink event: {exc}", exc.dev_eui), None
    device = devices_by_eui.get(uplink.dev_eui)
    if device is None:
        return (f"lorawan/{uplink.dev_eui}", b"",
                (f"{server} uplink from DevEUI {uplink.dev_eui}: no device provisioned with it", uplink.dev_eui), None)
    topic = status_topic_for(device) if uplink.f_port == status_port else topic_for(device)
    return topic, uplink.data, None, (uplink.f_cnt, uplink.gateways, uplink.spreading_factor, uplink.dev_addr,
                                    uplink.frequency)
