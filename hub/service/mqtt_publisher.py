"""A minimal MQTT 3.1.1 client that publishes batches at QoS 1: the MQTT sink's transport.

Why not paho here: paho spends about 150 us of CPU per QoS 1 publish on these machines
(measured with 10-100 messages in flight), as much as verifying and committing the frame,
and the forwarder shares the hub's interpreter, so forwarding through paho cut the hub's
ingest rate by a third. A sink needs only CONNECT, a pipelined burst of PUBLISH packets and
their PUBACKs: one `sendall` per batch and a read loop, a few microseconds a message.

Keepalive is 0 (the broker never times the connection out); a dead connection shows as a
send error or PUBACKs missing after `timeout`, and the caller reconnects.
"""

import socket
import ssl
import struct

CONNACK_CODES = {1: "unacceptable protocol version", 2: "client id rejected", 3: "server unavailable",
                 4: "bad user name or password", 5: "not authorised"}


class MqttPublishError(Exception):
    """The connection failed, was refused, or a batch was not acknowledged in time."""


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


def publish_packet(topic: bytes, payload: bytes, packet_id: int) -> bytes:
    """PUBLISH, QoS 1, not retained: fixed header 0x32, topic, packet id, payload."""
    body_length = 2 + len(topic) + 2 + len(payload)
    return b"".join((b"\x32", _remaining_length(body_length), struct.pack(">H", len(topic)), topic,
                     struct.pack(">H", packet_id), payload))


class MqttPublisher:
    def __init__(self, host, port, client_id, username=None, password=None, tls_context=None, timeout=10.0):
        self.host, self.port, self.client_id = host, port, client_id
        self.username, self.password = username, password
        self.tls_context = tls_context
        self.timeout = timeout
        self.sock = None
        self.next_id = 1
        self._buffer = b""

    def connect(self) -> None:
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
        variable = _string("MQTT") + bytes((4, flags)) + struct.pack(">H", 0)  # level 4 = 3.1.1, keepalive 0
        body = variable + payload
        self.sock, self._buffer = sock, b""
        try:
            sock.sendall(b"\x10" + _remaining_length(len(body)) + body)
            kind, data = self._read_packet()
        except (OSError, ssl.SSLError, MqttPublishError) as exc:
            self.close()
            raise MqttPublishError(f"{self.host}:{self.port}: no CONNACK ({exc})") from None
        if kind != 0x20 or len(data) != 2 or data[1] != 0:
            self.close()
            code = data[1] if kind == 0x20 and len(data) == 2 else None
            raise MqttPublishError(f"{self.host}:{self.port} refused the connection: "
                                   f"{CONNACK_CODES.get(code, 'not a CONNACK')}")

    def publish_batch(self, messages) -> None:
        """Publish (topic bytes, payload bytes) pairs at QoS 1; return once each is acknowledged."""
        if self.sock is None:
            self.connect()
        pending = set()
        packets = []
        for topic, payload in messages:
            packet_id = self.next_id
            self.next_id = packet_id % 65535 + 1  # 1..65535, never 0
            pending.add(packet_id)
            packets.append(publish_packet(topic, payload, packet_id))
        try:
            self.sock.sendall(b"".join(packets))
            while pending:
                kind, data = self._read_packet()
                if kind == 0x40 and len(data) == 2:  # PUBACK
                    pending.discard(struct.unpack(">H", data)[0])
        except (OSError, ssl.SSLError, MqttPublishError) as exc:
            self.close()
            raise MqttPublishError(f"{len(pending)} of {len(packets)} publishes not acknowledged ({exc})") from None

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
