"""`linkseal agent run`: the agent core on a Linux device, with paho-mqtt.

The same pieces as the MicroPython firmware (agent.Sealer, firmware/device/epoch.py,
firmware/device/store.py), with the state directory in place of flash:

- the boot epoch advances and is persisted before the first record of every run;
- every sealed frame is appended to the store file before anything else happens to it,
  together with the source offset just past its record, so after `kill -9` the source is
  read again from exactly where sealed records end: nothing is lost, nothing sealed twice;
- frames go to the broker oldest first, one at a time at QoS 1, and leave the store only
  when the broker has acknowledged them; the resume offset is saved before that, so a crash
  in between re-sends a frame (a duplicate the hub absorbs), never re-reads a record;
- status messages as on the firmware (agent/status.py): a birth at every connect, a death
  registered as the last will (sealed afresh before every connection attempt), and a
  heartbeat with the position of the newest record the broker has;
- a seal mark (firmware/device/sealmark.py) so the next run's birth says how far this epoch
  got: every frame is in the store before it is sent, so a kill -9 destroys at most the one
  being sealed, and a clean stop writes the exact end.
"""

import struct
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from agent import frame, topic_for
from agent.sealer import sealer_for, status_topic_for
from agent.status import BIRTH, DEATH, HEARTBEAT, status_payload
from firmware.device import epoch as epoch_file
from firmware.device import sealmark
from firmware.device import store as store_file
from shared.aes import ecb_block

_OFFSET = struct.Struct(">Q")


class AgentState:
    """The state directory: epoch, queue of (source offset, frame), resume offset."""

    def __init__(self, directory: Path, queue_bytes: int = 16 * 1024 * 1024):
        self.dir = Path(directory)
        fresh = not self.dir.exists()
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.epoch_path = str(self.dir / "epoch")
        if fresh:
            epoch_file.write(self.epoch_path, 0)
        self.epoch = epoch_file.advance(self.epoch_path)  # EpochError: refuse to seal
        self.store = store_file.Store(str(self.dir / "queue"), ram_frames=0, file_bytes=queue_bytes)
        self.offset_path = self.dir / "source-offset"
        self.lock = threading.Lock()
        self.mark = sealmark.SealMark(str(self.dir / "sealmark"), self.epoch)
        queued = (item[_OFFSET.size:] for item in self.store.frames())
        self.prev = self.mark.prev_field(sealmark.kept_end(queued, self.epoch - 1, lambda d: frame.decode(d)[2:4]))

    def resume_offset(self) -> int:
        """Where the source continues: past the last record sealed, queued or delivered."""
        try:
            saved = int(self.offset_path.read_text())
        except (OSError, ValueError):
            saved = 0
        last = 0
        for item in self.store.frames():
            last = _OFFSET.unpack_from(item)[0]
        return max(saved, last)

    def queue(self, offset: int, sealed: bytes) -> None:
        with self.lock:
            self.store.put(_OFFSET.pack(offset) + sealed)

    def oldest(self):
        with self.lock:
            item = self.store.peek()
        return None if item is None else (_OFFSET.unpack_from(item)[0], item[_OFFSET.size:])

    def delivered(self, offset: int) -> None:
        tmp = self.offset_path.with_suffix(".tmp")
        tmp.write_text(str(offset))
        tmp.replace(self.offset_path)
        with self.lock:
            self.store.pop()

    def depth(self) -> int:
        with self.lock:
            return len(self.store)


def read_records(source, start: int):
    """(record, offset just past it) for each line of a binary file from byte offset start
    (standard input cannot seek: it starts where it is)."""
    if source.seekable():
        source.seek(start)
    else:
        start = 0
    offset = start
    for line in iter(source.readline, b""):
        offset += len(line)
        if line.endswith(b"\n"):
            yield line.rstrip(b"\r\n"), offset
        else:
            return  # a last line still being written: take it next time


class LinuxAgent:
    def __init__(self, config: dict, broker, state: AgentState, log, qos: int = 1, max_rate: float = 50.0,
                 heartbeat_s: float = 30.0):
        """max_rate: frames per second at most (0: no limit), so that a backlog flushed after an
        outage stays under the hub's per-device rate limit (100/s by default) instead of being
        refused as rate_limited."""
        self.config = config
        self.max_rate = max_rate
        self.broker = broker
        self.state = state
        self.log = log
        self.qos = qos
        self.sealer = sealer_for(config, state.epoch, ecb_block)
        self.sealing = threading.Lock()  # the reader thread seals records, paho's thread status messages
        self.topic = topic_for(config["device_id"])
        self.status_topic = status_topic_for(config["device_id"])
        self.heartbeat_s = heartbeat_s
        self.sent = None  # (epoch, seq) of the newest record the broker acknowledged
        self.refused = 0  # records too long for the link, never sealed
        self.stopping = threading.Event()
        self.source_done = threading.Event()
        self._connected = False
        if broker is None:  # another transport (SerialAgent)
            return
        # The client id is the device id: brokers configured by `hub broker-config` bind each
        # account to its own (RabbitMQ refuses a device's publishes under any other).
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=config["device_id"])
        if broker.tls:
            self.client.tls_set(ca_certs=broker.ca_file, certfile=broker.cert_file, keyfile=broker.key_file)
        username = broker.username or config.get("mqtt_username")
        if username:
            self.client.username_pw_set(username, broker.password or config.get("mqtt_password"))
        self.client.reconnect_delay_set(1, 30)
        self._set_will()

    def status(self, kind: str) -> bytes:
        with self.sealing:
            return self.sealer.seal_status(status_payload(kind, self.sealer, self.state.depth(),
                                                          self.state.store.source_drops, self.sent, "process_start",
                                                          self.refused, self.state.prev,
                                                          every=(self.heartbeat_s, None)))

    def _set_will(self) -> None:
        # Each connection gets its own sealed death message: the hub refuses a repeated one.
        self.client.will_set(self.status_topic, self.status(DEATH), qos=1)

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        where = f"{self.broker.host}:{self.broker.port}"
        if reason_code.is_failure:  # a refused login is not a connection; paho retries with backoff (1-30 s)
            self.log("connect_refused", broker=where, reason=str(reason_code), code=reason_code.value)
            return
        self._connected = True
        self.log("connected", broker=where)
        client.publish(self.status_topic, self.status(BIRTH), qos=1)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        if self._connected:  # not after a refused login: that was never a connection
            self.log("disconnected", reason=str(reason_code))
        self._connected = False
        self._set_will()  # for the automatic reconnect

    def seal_from(self, source, start: int) -> None:
        """Seal every record of the source into the state's queue (the reader thread)."""
        for record, offset in read_records(source, start):
            if self.stopping.is_set():
                return
            try:
                with self.sealing:
                    self.state.mark.before_seal(self.sealer.epoch, self.sealer.seq)
                    sealed = self.sealer.seal(record)
            except ValueError as exc:  # too long for the link: reported, skipped, not fatal
                self.refused += 1
                self.log("record_refused", offset=offset, error=str(exc))
                continue
            self.state.queue(offset, sealed)
        self.source_done.set()

    # -- the transport: paho here, a serial line in SerialAgent ---------------------------

    def link_up(self) -> bool:
        return self.client.is_connected()

    def send(self, topic: str, data: bytes) -> bool:
        """True once the broker acknowledged the frame."""
        info = self.client.publish(topic, data, qos=self.qos)
        try:
            info.wait_for_publish(10)
        except (RuntimeError, ValueError):
            return False  # not sent (disconnected): try again after the reconnect
        return info.is_published()

    def send_heartbeat(self) -> None:
        self.client.publish(self.status_topic, self.status(HEARTBEAT), qos=1)

    def idle(self) -> None:
        self.stopping.wait(0.05)  # idle poll for new records; the queue itself is the signal

    def publish_queue(self) -> None:
        """Send the oldest frame until the broker acknowledges it, then the next (main thread)."""
        next_send = time.monotonic()
        next_heartbeat = time.monotonic() + self.heartbeat_s
        while not self.stopping.is_set():
            if time.monotonic() >= next_heartbeat and self.link_up():
                next_heartbeat = time.monotonic() + self.heartbeat_s
                self.send_heartbeat()
            oldest = self.state.oldest()
            if oldest is None:
                if self.source_done.is_set():
                    return
                self.idle()
                continue
            offset, data = oldest
            if not self.link_up():
                self.stopping.wait(0.2)
                continue
            if self.max_rate:
                self.stopping.wait(max(0.0, next_send - time.monotonic()))  # pacing, not synchronisation
                next_send = max(next_send, time.monotonic()) + 1.0 / self.max_rate
            if self.send(self.topic, data):
                self.state.delivered(offset)
                self.sent = frame.decode(data)[2:4]

    def start_transport(self) -> None:
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.connect_async(self.broker.host, self.broker.port, keepalive=30)
        self.client.loop_start()

    def stop_transport(self) -> None:
        # A clean stop says so: the hub marks the device offline, not silent. (The will, sealed
        # at connect, is only published when the connection breaks.)
        if self.link_up():
            self.send(self.status_topic, self.status(DEATH))
        self.client.disconnect()
        self.client.loop_stop()

    def run(self, source) -> int:
        self.start_transport()
        start = self.state.resume_offset()
        self.log("started", device=self.config["device_id"], epoch=self.state.epoch, resume_offset=start,
                 queued=self.state.depth())
        reader = threading.Thread(target=self.seal_from, args=(source, start), name="reader", daemon=True)
        reader.start()
        try:
            self.publish_queue()
        finally:
            self.stopping.set()
            reader.join(5)
            self.stop_transport()
        with self.sealing:
            self.state.mark.stop(self.sealer.seq)
        self.log("stopped", queued=self.state.depth(), source_drops=self.state.store.source_drops,
                 next_seq=self.sealer.seq)
        return 0
