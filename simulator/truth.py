"""Ground truth: what the hub must report for traffic the simulator generated.

An oracle written from docs/protocol.md with plain sets, independently of the hub's ring
window, so that comparing the two checks the hub rather than repeating it.
"""

from collections import defaultdict

from hub.core.counters import REPORTED
from hub.core.verifier import RETAINED_EPOCHS
from hub.core.window import WINDOW


class _Epoch:
    def __init__(self, base):
        self.base = base  # None: count from the first frame seen
        self.accepted = set()
        self.top = -1


class Ledger:
    def __init__(self):
        self.devices = defaultdict(lambda: dict.fromkeys(REPORTED, 0))
        self.links = defaultdict(lambda: dict.fromkeys(REPORTED, 0))
        self.device_link = {}
        self.epochs = defaultdict(dict)  # device -> epoch -> _Epoch
        self.unknown_device = 0

    def _count(self, device, link, outcome):
        for table in (self.devices[device], self.links[link]):
            table["received"] += 1
            table[outcome] += 1

    def unauthentic(self, device, home_link, outcome):
        """A frame that is corrupt, forged or malformed: charged to the device's current link."""
        link = self.device_link.setdefault(device, home_link)
        self._count(device, link, outcome)
        return outcome

    def unknown(self):
        self.unknown_device += 1
        return "unknown_device"

    def authentic(self, device, link, epoch, seq):
        """An intact frame with a good MAC: valid, duplicate or replay."""
        epochs = self.epochs[device]
        newest = max(epochs) if epochs else None
        if newest is not None and epoch <= newest - RETAINED_EPOCHS:
            self._count(device, link, "replay")
            return "replay"
        if epoch not in epochs:
            epochs[epoch] = _Epoch(0 if newest is not None and epoch > newest else None)
        e = epochs[epoch]
        if e.top >= 0 and seq <= e.top - WINDOW:
            outcome = "replay"
        elif seq in e.accepted:
            outcome = "duplicate"
        else:
            outcome = "valid"
            if seq < e.top:
                self.devices[device]["reordered"] += 1
                self.links[link]["reordered"] += 1
            e.accepted.add(seq)
            e.top = max(e.top, seq)
            self.device_link[device] = link
        self._count(device, link, outcome)
        return outcome

    def report(self):
        """Counters in the hub report's shape (integer counters only); lost filled in here.

        Lost is charged to each device's link: the traffic the simulator makes for the demo
        never switches a device's link mid-epoch.
        """
        devices = {d: dict(c) for d, c in self.devices.items()}
        links = {name: dict(c) for name, c in self.links.items()}
        for device, epochs in self.epochs.items():
            lost = unknown = 0
            for e in epochs.values():
                base = e.base if e.base is not None else min(e.accepted)
                lost += (e.top - base + 1) - len(e.accepted)
                unknown += base if e.base is None else 0  # before the first frame of an epoch seen mid-way
            devices[device]["lost"], devices[device]["lost_unknown"] = lost, unknown
            links[self.device_link[device]]["lost"] += lost
            links[self.device_link[device]]["lost_unknown"] += unknown
        return {"devices": devices, "links": links, "unknown_device": self.unknown_device}


def mismatches(truth: dict, report: dict) -> list[str]:
    """Every integer counter where the hub's report differs from the ground truth."""
    problems = []
    for section in ("devices", "links"):
        names = set(truth[section]) | set(report[section])
        for name in sorted(names):
            want = truth[section].get(name, dict.fromkeys(REPORTED, 0))
            got = report[section].get(name, dict.fromkeys(REPORTED, 0))
            for counter in REPORTED:
                if want[counter] != got[counter]:
                    problems.append(f"{section[:-1]} {name}: {counter} is {got[counter]}, truth {want[counter]}")
    if truth["unknown_device"] != report["unknown_device"]:
        problems.append(f"unknown_device is {report['unknown_device']}, truth {truth['unknown_device']}")
    return problems
