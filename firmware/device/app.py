# The agent on a MicroPython board: take records from records.py, seal them, queue them,
# publish them, and say how the device is doing in status messages.
#
# Files on the board (written by `linkseal firmware build` and `firmware flash`):
#   device.json   the device's id, key and broker credentials (`linkseal keys provision`)
#   agent.json    transport (mqtt: broker address, WiFi, QoS; lorawan: the modem's UART and
#                 the payload per data rate; serial: the UART to the relay, its DE pin, polled
#                 or not), intervals, watchdog (`firmware build` options)
#   epoch         the boot epoch (epoch.py); queue, queue.state: store-and-forward (store.py)
#   sealmark      how far the epoch may have got (sealmark.py): the next birth tells the hub
#                 which records a power cut destroyed in the RAM queue
#
# Order at start: advance and persist the epoch before anything is sealed (a missing or
# damaged epoch file stops the agent: it says so on the console and never seals), bring
# the network up, then loop. The loop never blocks for long: the watchdog is fed on every
# turn, and any error short of a broken epoch is reported and retried, never silent.
import gc
import json
import random
import time

import epoch as epoch_file
import records
import sealmark
from store import Store

from agent import frame
from agent.sealer import sealer_for, status_topic_for, topic_for
from agent.status import BIRTH, DEATH, HEARTBEAT, status_payload

DEFAULTS = {
    "qos": 1,  # 0 or 1
    "record_interval_ms": 1000,
    "heartbeat_s": 30,
    "keepalive_s": 60,
    "ack_timeout_s": 10,
    "max_rate": 50,  # frames a second at most (0: no limit), under the hub's per-device limit (100/s)
    "ram_queue": 64,  # frames held in RAM before they spill to flash
    "queue_bytes": 32768,  # flash for queued frames; beyond it the oldest are dropped
    "backoff_ms": 1000,  # first reconnect delay; doubles up to backoff_max_ms, with jitter
    "backoff_max_ms": 60000,
    "watchdog_ms": 30000,
    "seal_lease": sealmark.LEASE,  # records per seal-mark write: the bound on what a power cut leaves unsure
    "log_seals": False,  # print every (epoch, seq) sealed on the console (diagnostics, tests)
    "held_retry_ms": 1000,  # a LoRaWAN modem busy or at its duty cycle: try the frame again after this
}
_RESET_CAUSES = {1: "power_on", 2: "hard_reset", 3: "watchdog", 4: "deep_sleep", 5: "soft_reset"}


def load_json(path):
    with open(path) as f:
        return json.load(f)


def reset_cause():
    try:
        import machine

        return _RESET_CAUSES.get(machine.reset_cause(), "unknown")
    except (ImportError, AttributeError):
        return "unknown"


def start_watchdog(settings):
    # The hardware watchdog resets the board if the loop stops feeding it.
    if not settings.get("watchdog"):
        return None
    try:
        from machine import WDT

        return WDT(timeout=settings["watchdog_ms"])
    except (ImportError, ValueError):
        return None


class Agent:
    def __init__(self, config, settings, boot_epoch, store, transport, cause, mark=None):
        self.settings = settings
        self.sealer = sealer_for(config, boot_epoch)
        self.mark = mark or sealmark.SealMark("sealmark", boot_epoch, settings["seal_lease"])
        # What the birth says about the epoch before: the frames of it still queued on flash
        # are on their way; the rest above what the hub saw were destroyed.
        self.prev = self.mark.prev_field(sealmark.kept_end(store.frames(), boot_epoch - 1,
                                                           frame.position))
        self.topic = topic_for(config["device_id"])
        self.status_topic = status_topic_for(config["device_id"])
        self.store = store
        self.transport = transport
        self.cause = cause
        self.sent = None  # (epoch, seq) of the newest record the broker took
        self.refused = 0  # records too long for the link
        self.too_large = 0  # sealed frames the link's current data rate cannot carry, dropped unsent
        self.unsent_status = None  # a sealed birth or heartbeat the transport has yet to take
        self.failures = 0  # connection attempts failed in a row
        now = time.ticks_ms()
        self.next_record = now
        self.next_connect = now
        self.next_heartbeat = now
        self.next_send = now

    def _status(self, kind):
        if self.sealer.compact:  # a LoRaWAN uplink: the same fields in a few bytes
            from agent.compact_status import compact_status_payload  # only compact builds carry it

            doc = compact_status_payload(kind, self.sealer, len(self.store), self.store.source_drops, self.sent,
                                         self.cause, self.refused, self.prev, self.too_large)
        else:
            doc = status_payload(kind, self.sealer, len(self.store), self.store.source_drops, self.sent, self.cause,
                                 self.refused, self.prev, self.mark.writes + self.store.writes, self.too_large,
                                 (self.settings["heartbeat_s"], self.settings["record_interval_ms"] / 1000))
        return self.sealer.seal_status(doc)

    def take_record(self):
        record = records.read()
        if record is None:
            return
        sealer = self.sealer
        self.mark.before_seal(sealer.epoch, sealer.seq)
        try:
            self.store.put(sealer.seal(record))
            if self.settings["log_seals"]:
                print("linkseal: sealed %d %d" % (sealer.epoch, sealer.seq - 1))
        except ValueError as exc:  # too long for the link: counted, reported, not fatal
            self.refused += 1
            print("linkseal: record refused:", exc)

    def connect(self, now):
        # The death message is sealed now and held by the broker as the last will (LoRaWAN has
        # none: no status number is spent on a death that is never sent).
        will = self._status(DEATH) if self.transport.has_will else None
        try:
            self.transport.connect(self.status_topic, will)
            self.unsent_status = self._status(BIRTH)
            self.send_status(now)
        except Exception as exc:  # OSError, MQTTException, a refused login: retry later
            self.transport.close()
            self.failures += 1
            delay = min(self.settings["backoff_max_ms"], self.settings["backoff_ms"] << min(self.failures - 1, 16))
            delay = delay // 2 + random.getrandbits(16) * delay // 131072  # jitter: 50-100%
            self.next_connect = time.ticks_add(now, delay)
            print("linkseal: broker unreachable (%r); retry in %d ms" % (exc, delay))
            return
        self.failures = 0
        self.next_heartbeat = time.ticks_add(now, self.settings["heartbeat_s"] * 1000)
        print("linkseal: connected, epoch %d, %d queued" % (self.sealer.epoch, len(self.store)))

    def send_status(self, now):
        """Publish the sealed status message waiting, if any; True when none waits any more. A
        status message once sealed is sent, never dropped (on LoRaWAN the hub counts the ones it
        never saw as lost uplinks)."""
        if self.unsent_status is None:
            return True
        if time.ticks_diff(now, self.next_send) < 0:
            return False
        if self.transport.publish(self.status_topic, self.unsent_status, 1):  # held: the modem is busy
            self.next_send = time.ticks_add(now, self.settings["held_retry_ms"])
            return False
        self.unsent_status = None
        return True

    def send_one(self, now):
        """Publish the oldest queued frame; forget it once the broker has it (or, on LoRaWAN,
        once it went out)."""
        data = self.store.peek()
        if data is None or time.ticks_diff(now, self.next_send) < 0:
            return False
        try:
            held = self.transport.publish(self.topic, data, self.settings["qos"])
        except ValueError as exc:  # longer than the link's current data rate carries: never cut
            self.store.drop()
            self.too_large += 1
            print("linkseal: frame dropped unsent:", exc)
            return True
        if held:  # the modem is busy or at its duty cycle: the frame waits
            self.next_send = time.ticks_add(now, self.settings["held_retry_ms"])
            return False
        self.store.pop()
        self.sent = frame.position(data)
        if self.settings["max_rate"]:
            self.next_send = time.ticks_add(now, 1000 // self.settings["max_rate"])
        return True

    def step(self):
        """One turn of the loop; returns True when there is more to send right away."""
        now = time.ticks_ms()
        if time.ticks_diff(now, self.next_record) >= 0:
            self.next_record = time.ticks_add(now, self.settings["record_interval_ms"])
            self.take_record()
        if not self.transport.connected():
            if time.ticks_diff(now, self.next_connect) >= 0:
                self.connect(now)
            return False
        try:
            if time.ticks_diff(now, self.next_heartbeat) >= 0:
                self.next_heartbeat = time.ticks_add(now, self.settings["heartbeat_s"] * 1000)
                if self.unsent_status is None:  # one waiting is enough; the next heartbeat comes soon after
                    self.unsent_status = self._status(HEARTBEAT)
            busy = self.send_status(now) and self.send_one(now)
            self.transport.keep_alive()
            return busy
        except Exception as exc:  # the connection broke: the frame stays queued, reconnect
            print("linkseal: connection lost (%r)" % (exc,))
            self.transport.close()
            self.next_connect = now
            return False


def start(config_path="device.json", settings_path="agent.json"):
    """Everything before the loop: (agent, feed the watchdog)."""
    settings = dict(DEFAULTS)
    settings.update(load_json(settings_path))
    watchdog = start_watchdog(settings)
    feed = watchdog.feed if watchdog else (lambda: None)
    try:
        boot_epoch = epoch_file.advance("epoch")
    except epoch_file.EpochError as exc:
        # Sealing now could reuse an (epoch, seq): refuse, and keep saying why.
        while True:
            print("linkseal: not sealing:", exc)
            for _ in range(50):
                feed()
                time.sleep_ms(200)
    config = load_json(config_path)
    transport = make_transport(config, settings, feed)
    store = Store("queue", ram_frames=settings["ram_queue"], file_bytes=settings["queue_bytes"])
    agent = Agent(config, settings, boot_epoch, store, transport, reset_cause())
    print("linkseal: agent started, epoch %d, %d queued" % (boot_epoch, len(store)))
    return agent, feed


def make_transport(config, settings, feed):
    # One transport per build, named in agent.json by `firmware build`: transport (MQTT),
    # lorawan, uart_link or ble_link. Each makes itself from the settings it alone reads.
    return __import__(settings["transport"]).make(config, settings, feed)


def main():
    agent, feed = start()
    gc.collect()
    while True:
        feed()
        if not agent.step():
            time.sleep_ms(10)
