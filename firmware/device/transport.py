# MQTT for the agent: micropython-lib's umqtt.simple, with its known problems worked around.
#
# - Its packet id is never wrapped (micropython-lib issue #94): after 65,535 QoS 1 publishes
#   it sends id 0 (or fails), and the broker drops the connection. We wrap it ourselves.
# - A QoS 1 publish waits for its PUBACK with no timeout. We give the socket one before each
#   publish, so a lost PUBACK ends in OSError: the caller reconnects and sends the frame
#   again (a new packet id, a duplicate at the broker, which the hub's window absorbs).
# - It sends no keepalive pings by itself: ping() when the link has been quiet.
# - TLS: current micropython-lib versions take an ssl.SSLContext, the old PyPI one a flag;
#   a context serves both (the old one then skips the broker's certificate check).
import time

from umqtt.simple import MQTTClient


class Transport:
    has_will = True  # the broker holds a sealed death message for when the connection breaks

    def __init__(self, client_id, host, port, user=None, password=None, tls=False, keepalive_s=60,
                 ack_timeout_s=10, ca_file=None):
        self.client_id = client_id
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.tls = tls
        self.keepalive_s = keepalive_s
        self.ack_timeout_s = ack_timeout_s
        self.ca_file = ca_file  # DER certificate of the CA that signed the broker's, on the board
        self.client = None
        self._last_io = 0

    def connect(self, will_topic, will_payload):
        """Open the connection with a QoS 1 last will; OSError or MQTTException on failure."""
        self.close()
        client = MQTTClient(self.client_id, self.host, self.port, self.user, self.password,
                            keepalive=self.keepalive_s, ssl=self._tls_context() if self.tls else False)
        client.set_last_will(will_topic, will_payload, qos=1)
        client.connect()
        self.client = client
        self._last_io = time.ticks_ms()

    def _tls_context(self):
        import ssl

        if not hasattr(ssl, "SSLContext"):
            return True  # a port without contexts: umqtt.simple wraps the socket itself
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if self.ca_file:
            with open(self.ca_file, "rb") as f:
                context.load_verify_locations(cadata=f.read())
            context.verify_mode = ssl.CERT_REQUIRED
        else:
            print("linkseal: TLS without a CA certificate: the broker is not authenticated")
            context.verify_mode = ssl.CERT_NONE
        return context

    def connected(self):
        return self.client is not None

    def publish(self, topic, payload, qos=1):
        client = self.client
        if client.pid >= 65535:
            client.pid = 0  # the next publish takes id 1: ids stay within 1..65535
        if qos:
            client.sock.settimeout(self.ack_timeout_s)
        client.publish(topic, payload, qos=qos)
        self._last_io = time.ticks_ms()

    def keep_alive(self):
        """Ping when half the keepalive went by in silence, and read what the broker sent."""
        client = self.client
        if time.ticks_diff(time.ticks_ms(), self._last_io) > self.keepalive_s * 500:
            client.ping()
            self._last_io = time.ticks_ms()
        client.check_msg()  # drains PINGRESP; raises OSError when the connection is gone

    def close(self):
        client, self.client = self.client, None
        if client is not None and client.sock is not None:
            try:
                client.sock.close()
            except OSError:
                pass


def network_up(settings, feed):
    # WiFi boards join the access point in agent.json; others (Ethernet, cellular modems)
    # bring their link up before main.py runs.
    wifi = settings.get("wifi")
    if not wifi:
        return
    import network

    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if not wlan.isconnected():
        wlan.connect(wifi["ssid"], wifi.get("password", ""))
    while not wlan.isconnected():
        feed()
        time.sleep_ms(200)


def make(config, settings, feed):
    """The agent's transport from agent.json (app.make_transport)."""
    network_up(settings, feed)
    broker = settings["broker"]
    # client id = device id: the brokers `hub broker-config` sets up bind each account to its own
    return Transport(config["device_id"], broker["host"], broker["port"], config.get("mqtt_username"),
                     config.get("mqtt_password"), broker.get("tls", False), settings["keepalive_s"],
                     settings["ack_timeout_s"], broker.get("ca"))
