"""Behaviour rules: what a device's traffic in one window may look like (docs/behaviour.md).

Each rule names a metric of a device's window and a bound the value must not exceed, like
AWS IoT Device Defender's behaviours: a fixed value, a factor of the device's own normal, or
a percentile of its link type's fleet in the window before; consecutive windows to alarm
and to clear. `hub.toml` may list its own `[[behaviour]]` tables; DEFAULT_RULES ship enabled.
"""

# Per device, per window: authentic new records, their mean and largest payload bytes,
# births (connects), and frames under its id that were forged or replayed.
METRICS = ("records", "bytes_mean", "bytes_max", "births", "forged", "replayed")
# Metrics a catch-up can inflate without any misbehaviour: the backlog a device or the
# broker kept through an outage arrives at once, and every device reconnects after one.
CATCH_UP_METRICS = ("records", "births")
LEARNED = ("records", "bytes_mean", "bytes_max", "births")  # the metrics each device learns its normal of
_FIELDS = {"name", "metric", "above", "own", "fleet", "factor", "floor", "alarm_after", "clear_after"}


class Rule:
    __slots__ = ("name", "metric", "above", "own", "fleet", "factor", "floor", "alarm_after", "clear_after")

    def __init__(self, name, metric, above=None, own=None, fleet=None, factor=1.0, floor=0.0, alarm_after=2,
                 clear_after=2):
        self.name, self.metric = name, metric
        self.above, self.own, self.fleet = above, own, fleet  # exactly one is set
        self.factor, self.floor = factor, floor  # fleet: factor x the percentile; own and fleet: at least floor
        self.alarm_after, self.clear_after = alarm_after, clear_after

    def bound(self, normal, fleet_value):
        """The bound of one window, or None while it cannot be known (normal still being
        learned, too few devices of the link type)."""
        if self.above is not None:
            return self.above
        if self.own is not None:
            return None if normal is None else max(self.own * normal, self.floor)
        return None if fleet_value is None else max(self.factor * fleet_value, self.floor)

    def describe_bound(self, normal, fleet_value) -> str:
        if self.above is not None:
            return "fixed"
        if self.own is not None:
            return "%g x own normal %.4g" % (self.own, normal)
        return "%g x fleet p%g %.4g" % (self.factor, self.fleet, fleet_value)


DEFAULT_RULES = (
    # A compromised device flooding with validly sealed records.
    Rule("record_flood", "records", own=3.0, floor=3, alarm_after=1, clear_after=2),
    Rule("record_flood_fleet", "records", fleet=99, factor=4.0, floor=12, alarm_after=2, clear_after=2),
    # Exfiltration: payloads far larger than this device sends.
    Rule("large_records", "bytes_mean", own=2.5, floor=16, alarm_after=1, clear_after=2),
    Rule("largest_record", "bytes_max", own=4.0, floor=32, alarm_after=1, clear_after=2),
    # A reconnect storm: a device that connects again and again (Device Defender's connection attempts).
    Rule("reconnect_storm", "births", above=3, alarm_after=1, clear_after=2),
    # Someone sends in its name without its key, or replays its frames.
    Rule("forgeries", "forged", above=5, alarm_after=1, clear_after=2),
    Rule("replays", "replayed", above=5, alarm_after=1, clear_after=2),
)


def parse_rules(tables, where: str = "hub.toml") -> tuple:
    """Rules from `[[behaviour]]` tables; ValueError naming the table and field that is wrong."""
    if not isinstance(tables, list):
        raise ValueError(f"{where}: behaviour must be an array of tables ([[behaviour]])")
    rules, names = [], set()
    for number, table in enumerate(tables, start=1):
        at = f"{where}: [[behaviour]] number {number}"
        if not isinstance(table, dict):
            raise ValueError(f"{at} is not a table")
        unknown = set(table) - _FIELDS
        if unknown:
            raise ValueError(f"{at}: unknown field {', '.join(sorted(unknown))}; known: {', '.join(sorted(_FIELDS))}")
        name = table.get("name")
        if not isinstance(name, str) or not name or not name.replace("_", "").isalnum() or len(name) > 40:
            raise ValueError(f"{at}: name must be a short word (letters, digits, _)")
        if name in names:
            raise ValueError(f"{at}: a second rule named {name!r}")
        names.add(name)
        if table.get("metric") not in METRICS:
            raise ValueError(f"{at} ({name}): metric must be one of {', '.join(METRICS)}")
        kinds = [kind for kind in ("above", "own", "fleet") if kind in table]
        if len(kinds) != 1:
            raise ValueError(f"{at} ({name}): give exactly one of above (a fixed bound), own (a factor of the "
                             "device's own normal) or fleet (a percentile of its link type)")
        for field, low, high in (("above", 0, 1e9), ("own", 1.0, 1e6), ("fleet", 1, 100), ("factor", 0.01, 1e6),
                                 ("floor", 0, 1e9), ("alarm_after", 1, 1000), ("clear_after", 1, 1000)):
            value = table.get(field)
            if value is None:
                continue
            whole = field in ("alarm_after", "clear_after")
            if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)) or not (
                    low <= value <= high):
                raise ValueError(f"{at} ({name}): {field} must be a {'whole ' if whole else ''}number "
                                 f"from {low:g} to {high:g}")
        if "own" in table and table["metric"] not in LEARNED:
            raise ValueError(f"{at} ({name}): devices learn no normal of {table['metric']}; use above or fleet")
        rules.append(Rule(name, table["metric"], **{k: v for k, v in table.items() if k not in ("name", "metric")}))
    return tuple(rules)


def percentile(values: list, p: float) -> float:
    """The p-th percentile (0..100) of values, by linear interpolation between ranks."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
