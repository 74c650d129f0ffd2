"""What the seals (hub/service/storage/seals.py) add to each commit.

seal_commit_overhead: the time to commit a batch with its seals over the time without them,
for a batch of 1000 messages from 1000 devices (the worst case: every device's state row
written again) and from 50 devices. Both measured in one run, the best of many repetitions
each (this machine is shared), on a real SQLite file; without fsync, which would only hide
the difference. The ingest-ratio figures of bench_ingest show the effect end to end.
"""

import json
import tempfile
import time
from pathlib import Path

from agent import Sealer, topic_for
from hardware.link_registry import links_by_code
from hub.core.verifier import DeviceKeys, Verifier
from hub.service.storage import seals
from hub.service.ingest import Ingest
from hub.service.storage.sqlite import SQLiteStorage

BATCH = 1000
REPEATS = 15
KEY = bytes(range(32))


class UnsealedDelta(seals.SealDelta):
    """The baseline: the same commit path with the seal work taken out."""

    def add(self, table, row, sign=1):
        pass

    def replace(self, db, table, rows, known):
        pass

    def add_records(self, first_id, records):
        pass

    def flush(self, db):
        pass


def best_commit_seconds(devices: int, delta_class, directory: Path) -> float:
    names = {code: link.name for code, link in links_by_code().items()}
    ids = [f"dev-{i}" for i in range(devices)]
    sealers = [Sealer(d, KEY, link="wifi", epoch=1) for d in ids]
    ingest = Ingest(Verifier([DeviceKeys(d, {0: KEY}, "wifi") for d in ids], names),
                    SQLiteStorage(directory / f"{devices}-{delta_class.__name__}.db"))
    ingest.storage.db.execute("PRAGMA synchronous=OFF")
    seals_class, seals.SealDelta = seals.SealDelta, delta_class
    try:
        best, t = float("inf"), 1.8e9
        for repeat in range(REPEATS + 1):
            for n in range(BATCH):
                sealer = sealers[n % devices]
                ingest.handle(topic_for(sealer.device_id), sealer.seal(b"temperature=21.5"), t)
                t += 0.01
            started = time.perf_counter()
            ingest.commit()
            if repeat:  # the first commit creates every row: not the steady state
                best = min(best, time.perf_counter() - started)
    finally:
        seals.SealDelta = seals_class
    ingest.storage.close()
    return best


def main():
    with tempfile.TemporaryDirectory() as tmp:
        for devices in (BATCH, 50):
            sealed = best_commit_seconds(devices, seals.SealDelta, Path(tmp))
            bare = best_commit_seconds(devices, UnsealedDelta, Path(tmp))
            print(json.dumps({"figure": "seal_commit_overhead", "devices_in_batch": devices,
                              "value": round(sealed / bare, 3), "commit_ms_sealed": round(sealed * 1000, 2),
                              "commit_ms_bare": round(bare * 1000, 2),
                              "seal_us_per_message": round((sealed - bare) / BATCH * 1e6, 2)}))


if __name__ == "__main__":
    main()
