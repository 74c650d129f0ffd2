"""The ingest path without MQTT: verify each message, gather what one commit must hold.

The MQTT adapter (hub/service/ways_in/mqtt_adapter.py) feeds messages in and acknowledges them only after
`commit()` returns, so a crash between the two makes the broker redeliver, and the
restored verifier state turns the redelivery into a duplicate, never a second record.
"""

from hub.core.counters import LINK_SLOT_NAMES, LINK_SLOTS
from hub.core.status import is_status_topic
from hub.core.verifier import Verifier
from hub.core.watch import Watch
from hub.service.storage.sqlite import Batch, Storage

_ZERO = bytes(8 * LINK_SLOTS)


class Ingest:
    def __init__(self, verifier: Verifier, storage: Storage, on_verdict=None, stored=None, watch_options=None):
        """on_verdict(verdict): called for every message handled (the simulator collects them);
        stored: what storage.load() returned, when the caller has loaded it already;
        watch_options: the liveness and behaviour watch's settings (HubSettings.watch_options();
        default: the default rules)."""
        self.verifier = verifier
        self.watch = Watch(verifier.record_event, verifier.status, **(watch_options or {}))
        self.storage = storage
        self.on_verdict = on_verdict
        stored = stored if stored is not None else storage.load()
        for device, state in stored.devices:
            verifier.restore_device(device, state)
        for link, state in stored.links:
            verifier.restore_link(link, state)
        for device, text in stored.statuses:
            verifier.restore_status(device, text)
        verifier.unknown_device = stored.unknown_device
        self._intake_at = stored.intake_at  # the arrival time of the newest message handled
        if stored.intake_at is not None:  # every device heard before, as it was then
            for device, link, _ in verifier.devices():
                status = verifier.status.get(device)
                self.watch.restore(device, link, status.fields if status else None, stored.intake_at)
        self._unwritten = None  # a batch storage refused, written again by the next commit()
        self._start_batch()

    def _start_batch(self):
        self.pending = 0  # messages handled since the last commit
        self._records = []
        self._counts = []
        self._touched = set()  # devices whose state this commit must write
        self._statuses = set()  # devices whose status this commit must write
        self._minute = None
        self._start_minute()

    def _start_minute(self):
        # Counter values when the current minute's bucket began (devices: at their first frame).
        self._before = {}
        self._links_before = {code: c.tobytes() for code, c in self.verifier.link_counters.items()}
        self._unknown_before = self.verifier.unknown_device

    def resume(self, now: float) -> None:
        """Intake starts again (a restart, a partition taken over): the time since the newest
        message the store holds is time the devices' backlogs built up, not a burst of theirs."""
        if self._intake_at is not None:
            self.verifier.credit_stall(now - self._intake_at, now)
        self.watch.hold(now)

    def tick(self, now: float) -> None:
        """The watch's clock moves on without a message (the live hub, between batches)."""
        self.watch.tick(now)

    def handle(self, topic: str, payload: bytes, t: float, redelivered: bool = False, refused=None, radio=None):
        """Verify one message; returns the verifier's Verdict. redelivered: the MQTT DUP flag;
        refused: (reason, label) when the way in found no frame in the message (Verifier.refuse);
        radio: (fCnt, gateways, spreading factor, DevAddr, frequency) of a LoRaWAN uplink (Verifier.observe_radio)."""
        self.watch.tick(t)
        minute = int(t // 60) * 60
        if minute != self._minute:
            self._close_minute()
            self._minute = minute
        known = self.verifier.counters_for(topic)
        if known is not None and known[0] not in self._before:
            self._before[known[0]] = known[1].tobytes()
            self._touched.add(known[0])
        if refused is not None:
            verdict = self.verifier.refuse(topic, refused[0], t, refused[1])
        elif is_status_topic(topic):  # birth, death, heartbeat: kept as the device's status
            verdict = self.verifier.verify_status(topic, payload, t)
            if verdict.outcome == "valid":
                self._statuses.add(verdict.device_id)
                if radio is not None:
                    self.verifier.observe_radio(verdict.device_id, "status", verdict.epoch, verdict.seq, radio)
        else:
            verdict = self.verifier.verify(topic, payload, t, redelivered)
            if verdict.outcome == "valid":
                self._records.append((verdict.device_id, verdict.epoch, verdict.seq, verdict.link,
                                      verdict.device_time_ms, t, verdict.payload))
                if radio is not None:  # kept with the device's status, written with this commit
                    self.verifier.observe_radio(verdict.device_id, "record", verdict.epoch, verdict.seq, radio)
                    self._statuses.add(verdict.device_id)
        self.watch.observe(verdict, t)
        self.pending += 1
        self._intake_at = t
        if self.on_verdict is not None:
            self.on_verdict(verdict)
        return verdict

    def _close_minute(self):
        """Turn the counter changes since the minute began into bucket rows."""
        if self._minute is not None:
            verifier, minute = self.verifier, self._minute
            for device, before in self._before.items():
                self._counts += _deltas(minute, "device", device, before, verifier.counters_for_device(device))
            for code, counters in verifier.link_counters.items():
                before = self._links_before.get(code, _ZERO)
                self._counts += _deltas(minute, "link", verifier.link_names[code], before, counters)
            if verifier.unknown_device != self._unknown_before:
                self._counts.append((minute, "hub", "", "unknown_device",
                                     verifier.unknown_device - self._unknown_before))
        self._start_minute()

    def touch(self, device: str) -> None:
        """Write this device's state with the next commit (its state came from elsewhere)."""
        self._touched.add(device)

    def commit(self) -> None:
        """Write everything handled since the last commit in one transaction. When storage
        fails, the batch is kept and the next commit() writes it again (nothing is lost)."""
        while True:  # a kept batch first, then what was handled since
            if self._unwritten is None:
                if not self.pending and not self.verifier.events:
                    return
                self._unwritten = self._take_batch()
            self.storage.commit(self._unwritten)
            self._unwritten = None

    def _take_batch(self) -> Batch:
        self._close_minute()
        verifier = self.verifier
        batch = Batch(records=self._records, counts=self._counts, events=verifier.drain_events())
        batch.devices = [(d, verifier.current_link(d), verifier.device_state(d)) for d in self._touched]
        self._statuses |= self.watch.changed  # liveness changes are kept with the status
        self.watch.changed = set()
        batch.statuses = [(d, verifier.status[d].to_json()) for d in self._statuses]
        batch.links = [(verifier.link_names[code], c.tobytes()) for code, c in verifier.link_counters.items()]
        batch.unknown_device = verifier.unknown_device
        batch.intake_at = self._intake_at
        self._start_batch()
        return batch


def _deltas(minute, scope, name, before: bytes, now) -> list:
    """Count rows for the counters that changed since `before` (bytes of a counter array, a
    device's or a link's: the device slots are the first of a link's)."""
    old = memoryview(before).cast("q")
    return [(minute, scope, name, LINK_SLOT_NAMES[i], now[i] - old[i]) for i in range(len(now)) if now[i] != old[i]]
