"""The ingest path without MQTT: verify each message, gather what one commit must hold.

The MQTT adapter (hub/service.py) feeds messages in and acknowledges them only after
`commit()` returns, so a crash between the two makes the broker redeliver, and the
restored verifier state turns the redelivery into a duplicate, never a second record.
"""

from .counters import SLOT_NAMES, SLOTS
from .storage import Batch, Storage  # noqa: F401  (Storage: the interface this needs)
from .verifier import Verifier

_ZERO = bytes(8 * SLOTS)


class Ingest:
    def __init__(self, verifier: Verifier, storage):
        self.verifier = verifier
        self.storage = storage
        stored = storage.load()
        for device, state in stored.devices:
            verifier.restore_device(device, state)
        for link, state in stored.links:
            verifier.restore_link(link, state)
        verifier.unknown_device = stored.unknown_device
        self.pending = 0  # messages handled since the last commit
        self._start_batch()

    def _start_batch(self):
        self._records = []
        self._before = {}  # device id -> counter bytes before its first frame in this batch
        self._links_before = {code: c.tobytes() for code, c in self.verifier.link_counters.items()}
        self._unknown_before = self.verifier.unknown_device
        self._last_t = 0.0
        self.pending = 0

    def handle(self, topic: str, payload: bytes, t: float):
        """Verify one message; returns the verifier's Verdict."""
        known = self.verifier.counters_for(topic)
        if known is not None and known[0] not in self._before:
            self._before[known[0]] = known[1].tobytes()
        verdict = self.verifier.verify(topic, payload, t)
        if verdict.outcome == "valid":
            self._records.append((verdict.device_id, verdict.epoch, verdict.seq, verdict.link,
                                  verdict.device_time_ms, t, verdict.payload))
        self._last_t = max(self._last_t, t)
        self.pending += 1
        return verdict

    def commit(self) -> None:
        """Write everything handled since the last commit in one transaction."""
        if not self.pending:
            return
        self.storage.commit(self._batch())
        self._start_batch()

    def _batch(self) -> Batch:
        verifier = self.verifier
        minute = int(self._last_t // 60) * 60
        batch = Batch(records=self._records, events=verifier.drain_events())
        for device, before in self._before.items():
            batch.devices.append((device, verifier.current_link(device), verifier.device_state(device)))
            batch.counts += _deltas(minute, "device", device, before, verifier.counters_for_device(device).tobytes())
        for code, counters in verifier.link_counters.items():
            name = verifier.link_names[code]
            now = counters.tobytes()
            before = self._links_before.get(code, _ZERO)
            if now != before:
                batch.links.append((name, now))
                batch.counts += _deltas(minute, "link", name, before, now)
        if verifier.unknown_device != self._unknown_before:
            batch.counts.append((minute, "hub", "", "unknown_device", verifier.unknown_device - self._unknown_before))
        return batch


def _deltas(minute, scope, name, before: bytes, now: bytes) -> list:
    """Count rows for the counters that changed between two counter arrays."""
    old, new = memoryview(before).cast("q"), memoryview(now).cast("q")
    return [(minute, scope, name, SLOT_NAMES[i], new[i] - old[i]) for i in range(SLOTS) if new[i] != old[i]]
