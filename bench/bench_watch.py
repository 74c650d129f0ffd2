"""The hub's watch against the simulator's ground truth (sim run --anomalies).

silence_detection_delay_heartbeats: from a silence's start to the hub's `silent` event, in the
device's heartbeat periods, the largest over the silences injected (target <= 3).
false_alarms_per_1000_device_days: a 7-day run of 200 devices over all eight link types with
every kind of anomaly injected on six of them: alarms that match no injection and that the
truth contradicts (behaviour alarms on normal traffic, silences while something intact did
arrive), per 1000 device-days (target <= 1). Silences the links themselves caused (nothing
intact arrived for 3 heartbeat periods) are true silences, printed beside it.
"""

import json

from hardware.link_registry import load_links
from simulator.anomalies import KINDS
from simulator.anomaly_check import judge, run

SILENCE_SEEDS = (1, 2, 3, 4, 5)


def main():
    links = tuple(sorted(load_links()))
    week = judge(run(7, 200, links, 7 * 86400.0, KINDS))
    delays = [week["silence_detection_delay_heartbeats"]]
    clears = [row["clear_heartbeats"] for row in week["injected"] if row["kind"] == "silence"]
    for seed in SILENCE_SEEDS:  # more silences, on other devices and links
        short = judge(run(seed, 24, links, 2 * 86400.0, ("silence",)))
        delays.append(short["silence_detection_delay_heartbeats"])
        clears += [row["clear_heartbeats"] for row in short["injected"]]
    print(json.dumps({"figure": "silence_detection_delay_heartbeats", "value": round(max(delays), 3),
                      "target": "<= 3", "silences": len(delays), "all": [round(d, 3) for d in delays],
                      "clear_heartbeats_max": round(max(clears), 3)}))
    print(json.dumps({"figure": "false_alarms_per_1000_device_days", "value": week["false_alarms_per_1000_device_days"],
                      "target": "<= 1", "device_days": week["device_days"], "false_alarms": week["false_alarms"],
                      "link_silences": week["link_silences"],
                      "link_silences_per_1000_device_days": round(week["link_silences_per_1000_device_days"], 2),
                      "anomalies_alarmed": sum(row["ok"] for row in week["injected"]),
                      "anomalies_injected": len(week["injected"]), "messages": week["messages"]}))


if __name__ == "__main__":
    main()
