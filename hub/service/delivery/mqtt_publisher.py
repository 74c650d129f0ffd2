"""A minimal MQTT 5 client that publishes batches at QoS 1: the MQTT sink's transport.

Why not paho here: paho spends about 150 us of CPU per QoS 1 publish on these machines
(measured with 10-100 messages in flight), as much as verifying and committing the frame,
and the forwarder shares the hub's interpreter, so forwarding through paho cut the hub's
ingest rate by a third. A sink needs only CONNECT, a pipelined burst of PUBLISH packets and
their PUBACKs: one `sendall` per batch and a read loop, a few microseconds a message.

MQTT 5 because a 3.1.1 broker acknowledges a publish it then drops (Mosquitto: one over its
message_size_limit): an MQTT 5 PUBACK carries a reason code, and a code of 0x80 or more
(0x95 packet too large, 0x87 not authorised, ...) fails the batch, so the record is retried,
never counted delivered. A broker that does not speak MQTT 5 gets 3.1.1, and the batch is
delivered on its PUBACKs alone (the sink's log line says so once). At most the broker's
Receive Maximum publishes are in flight at once.

Keepalive is 0 (the broker never times the connection out); a dead connection shows as a
send error or PUBACKs missing after `timeout`, and the caller reconnects.
"""

import socket
import ssl
import struct

CONNACK_CODES = {1: "unacceptable protocol version", 2: "client id rejected", 3: "server unavailable",
                 4: "bad user name or password", 5: "not authorised"}
# MQTT 5 reason codes (section 2.4) a broker gives in CONNACK, PUBACK or DISCONNECT.
REASON_CODES = {0x80: "unspecified error", 0x81: "malformed packet", 0x82: "protocol error",
                0x83: "implementation specific error", 0x84: "unsupported protocol version",
                0x85: "client id not valid", 0x86: "bad user name or password", 0x87: "not authorised",
                0x88: "server unavailable", 0x89: "server busy", 0x8A: "banned", 0x8C: "bad authentication method",
                0x90: "topic name invalid", 0x93: "receive maximum exceeded", 0x95: "packet too large",
                0x97: "quota exceeded", 0x99: "payload format invalid", 0x9F: "connection rate exceeded"}
_RECEIVE_MAXIMUM = 0x21  # CONNACK property: publishes the broker takes in flight (2-byte integer)
_PROPERTY_SIZES = {0x01: 1, 0x02: 4, 0x11: 4, 0x13: 2, 0x17: 1, 0x19: 1, 0x21: 2, 0x22: 2, 0x23: 2, 0x24: 1,
                   0x25: 1, 0x27: 4, 0x28: 1, 0x29: 1, 0x2A: 1}  # fixed-size ones; the rest are strings or data


def reason(code: int) -> str:
    return f"{REASON_CODES.get(code, 'error')} (0x{code:02X})"


class MqttPublishError(Exception):
    """The connection failed, was refused, or a batch was not acknowledged, in time and with success."""


class _Refused(MqttPublishError):
    """A PUBACK with a failure reason code: the broker took the publish and will not deliver it."""


class _Unsupported(Exception):
    """The broker does not speak MQTT 5."""


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">H", len(data)) + data


def publish_packet(topic: bytes, payload: bytes, packet_id: int, version: int = 5) -> bytes:
    """PUBLISH, QoS 1, not retained: fixed header 0x32, topic, packet id, (MQTT 5: no
    properties), payload."""
    properties = b"\x00" if version == 5 else b""
    body_length = 2 + len(topic) + 2 + len(properties) + len(payload)
    return b"".join((b"\x32", _remaining_length(body_length), struct.pack(">H", len(topic)), topic,
                     struct.pack(">H", packet_id), properties, payload))


def _varint(data: bytes, pos: int):
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 21:
            raise MqttPublishError("malformed variable byte integer")
        digit = data[pos]
        pos += 1
        value += (digit & 0x7F) << shift
        if not digit & 0x80:
            return value, pos
        shift += 7


def connack_receive_maximum(properties: bytes) -> int | None:
    """The Receive Maximum in a CONNACK's properties, or None when the broker sets none."""
    pos = 0
    while pos < len(properties):
        ident = properties[pos]
        pos += 1
        if ident == _RECEIVE_MAXIMUM:
            return struct.unpack_from(">H", properties, pos)[0]
        if ident in _PROPERTY_SIZES:
            pos += _PROPERTY_SIZES[ident]
        elif ident == 0x26:  # user property: two strings
            for _ in range(2):
                pos += 2 + struct.unpack_from(">H", properties, pos)[0]
        else:  # a string or binary data
            pos += 2 + struct.unpack_from(">H", properties, pos)[0]
    return None


class MqttPublisher:
    def __init__(self, host, port, client_id, username=None, password=None, tls_context=None, timeout=10.0):
        self.host, self.port, self.client_id = host, port, client_id
        self.username, self.password = username, password
        self.tls_context = tls_context
        self.timeout = timeout
        self.sock = None
        self.next_id = 1
        self._buffer = b""
        self.version = 5  # 4 (3.1.1) once a broker refuses 5
        self.receive_maximum = 65535

    def connect(self) -> None:
        try:
            self._connect()
        except _Unsupported:
            self.version = 4
            self._connect()

    def _connect(self) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            if self.tls_context is not None:
                sock = self.tls_context.wrap_socket(sock, server_hostname=self.host)
        except (OSError, ssl.SSLError) as exc:
            raise MqttPublishError(f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}") from None
        flags = 0x02  # clean session: the hub's outbox, not the broker, remembers what is undelivered
        payload = _string(self.client_id)
        if self.username is not None:
            flags |= 0x80
            payload += _string(self.username)
            if self.password is not None:
                flags |= 0x40
                payload += _string(self.password)
        variable = _string("MQTT") + bytes((self.version, flags)) + struct.pack(">H", 0)  # keepalive 0
        if self.version == 5:
            variable += b"\x00"  # no properties
        body = variable + payload
        self.sock, self._buffer = sock, b""
        try:
            sock.sendall(b"\x10" + _remaining_length(len(body)) + body)
            kind, data = self._read_packet()
        except (OSError, ssl.SSLError, MqttPublishError) as exc:
            self.close()
            raise MqttPublishError(f"{self.host}:{self.port}: no CONNACK ({exc})") from None
        if kind == 0x20 and len(data) >= 2 and data[1] == 0:
            if self.version == 5:
                length, pos = _varint(data, 2)
                self.receive_maximum = connack_receive_maximum(data[pos : pos + length]) or 65535
            return
        self.close()
        if kind == 0x20 and len(data) >= 2 and self.version == 5 and data[1] in (0x01, 0x84):
            raise _Unsupported()  # a 3.1.1 broker answers level 5 with return code 1
        if kind != 0x20 or len(data) < 2:
            problem = "not a CONNACK"
        else:
            problem = reason(data[1]) if self.version == 5 else CONNACK_CODES.get(data[1], "refused")
        raise MqttPublishError(f"{self.host}:{self.port} refused the connection: {problem}")

    def publish_batch(self, messages) -> None:
        """Publish (topic bytes, payload bytes) pairs at QoS 1; return once each is acknowledged
        with success. MqttPublishError when one is not, naming its topic and the broker's reason."""
        if self.sock is None:
            self.connect()
        messages = list(messages)
        pending = {}  # packet id -> topic, awaiting its PUBACK
        sent = 0
        try:
            while sent < len(messages) or pending:
                window = []
                while len(pending) + len(window) < self.receive_maximum and sent < len(messages):
                    topic, payload = messages[sent]
                    packet_id = self.next_id
                    self.next_id = packet_id % 65535 + 1  # 1..65535, never 0
                    pending[packet_id] = topic
                    window.append(publish_packet(topic, payload, packet_id, self.version))
                    sent += 1
                if window:
                    self.sock.sendall(b"".join(window))
                kind, data = self._read_packet()
                if kind == 0x40 and len(data) >= 2:  # PUBACK; MQTT 5: a reason code after the id when not 0
                    topic = pending.pop(struct.unpack_from(">H", data)[0], None)
                    if len(data) > 2 and data[2] >= 0x80:
                        raise _Refused(f"the broker refused the publish on {topic.decode(errors='replace')}: "
                                       f"{reason(data[2])}")
                elif kind == 0xE0:  # the broker's DISCONNECT, with its reason (MQTT 5)
                    raise MqttPublishError("the broker disconnected" + (f": {reason(data[0])}" if data else ""))
        except _Refused as exc:
            self.close()
            raise MqttPublishError(f"{exc}; {len(messages) - sent + len(pending)} of {len(messages)} not delivered")
        except (OSError, ssl.SSLError, MqttPublishError) as exc:
            self.close()
            raise MqttPublishError(f"{len(messages) - sent + len(pending)} of {len(messages)} publishes not "
                                   f"acknowledged ({exc})") from None

    def _read_packet(self):
        """(packet type bits, body) of the next packet from the broker."""
        header = self._read(1)[0]
        length, shift = 0, 0
        while True:
            digit = self._read(1)[0]
            length += (digit & 0x7F) << shift
            if not digit & 0x80:
                break
            shift += 7
            if shift > 21:
                raise MqttPublishError("malformed remaining length")
        return header & 0xF0, self._read(length)

    def _read(self, n: int) -> bytes:
        while len(self._buffer) < n:
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise MqttPublishError(f"nothing from the broker for {self.timeout:g} s") from None
            if not chunk:
                raise MqttPublishError("the broker closed the connection")
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.sendall(b"\xe0\x00")  # DISCONNECT
            except (OSError, ssl.SSLError):
                pass
            self.sock.close()
            self.sock = None
