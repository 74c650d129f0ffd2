"""The hub's watch over each device: is it alive, and does it behave like itself?

Sans-I/O, on whatever clock feeds it: the live hub's clock, a replay's trace time (so two
replays give the same events at the same times). Fed every verdict (`observe`) and the
time (`tick`), it keeps per device:

- **Liveness** (docs/behaviour.md): `online` while anything authentic and new arrives,
  `offline` after a death (a clean stop or the broker's last will), `silent` after
  SILENT_AFTER heartbeat periods of nothing without a death. `silent` and `back` are events;
  the silent event carries the moment silence became certain (heard + 3 periods), not the
  moment a scan noticed it.
- **Behaviour** per window of `window_s` seconds on the same clock: records, their mean and
  largest size, births, forged and replayed frames (hub/core/behaviour.py). Each device
  learns its own normal (a running median, not taught by windows that breach a rule) and its
  link type's fleet normal is a percentile of its devices' normals; rules alarm and clear
  after consecutive windows (`behaviour_alarm`, `behaviour_clear`).

The hub going blind is not the devices going quiet: `hold(now)` (a restart, the broker
connection back, storage writable again) restarts every silence count at `now` and excuses
the catch-up that follows (backlogs, reconnects) from the rate rules for two windows.

State is one float32 array per device (times relative to `origin`), so 100k devices stay
within the hub's memory budget (bench/bench_memory.py).
"""

from array import array

from agent.status import BIRTH
from hub.core.behaviour import CATCH_UP_METRICS, DEFAULT_RULES, LEARNED, METRICS, percentile
from hub.core.status import DeviceStatus

ONLINE, OFFLINE, SILENT = "online", "offline", "silent"
LIVENESS = (ONLINE, OFFLINE, SILENT)
SILENT_AFTER = 3  # heartbeat periods of nothing before a device is silent
# The heartbeat period assumed for devices whose births do not announce one: the agents'
# defaults (agent run --heartbeat 30; LoRaWAN builds 300 s, duty cycle). hub.toml [watch.heartbeat_s].
DEFAULT_HEARTBEAT_S = {"default": 30.0, "lora": 300.0}
WINDOW_S = 300.0
SCAN_S = 5.0  # how often (on the watch's clock) liveness is checked: the notice lags the moment by at most this
LEARN_WINDOWS = 6  # windows a device's normal is learned over before rules on it may alarm
LEARN_STEP = 0.05  # the running median moves by this fraction of itself per window
FLEET_MIN = 5  # devices of a link type with a learned normal before its fleet percentile counts
MISSED_WINDOWS_EVALUATED = 12  # after a long gap in the clock, empty windows judged (for clears), at most
# The slots of a device's array.
HEARD, PERIOD, STATE, SINCE, LINK, EXCUSED, REJOINED, LEARNT = range(8)
ACC = 8  # records, bytes, largest, births, forged, replayed of the current window
REC, BYTES, LARGEST, BIRTHS, FORGED, REPLAYED = range(ACC, ACC + 6)
NORMAL = ACC + 6  # the learned normal of each metric in LEARNED
STREAK = NORMAL + len(LEARNED)  # per rule: 1000 x in alarm + consecutive windows towards a change
_IN_ALARM = 1000.0
_LEARNED_AT = tuple(METRICS.index(metric) for metric in LEARNED)  # where each learned metric sits in a window's values


def _caught_up(metric, excused: bool, rejoined: bool) -> bool:
    """Whether a window's metric is a catch-up, neither judged nor learned: after the hub or the
    device was out of sight (excused), or its records in the window of a reconnect (rejoined)."""
    return excused and metric in CATCH_UP_METRICS or rejoined and metric == "records"


class Watch:
    def __init__(self, record_event, statuses: dict, rules=DEFAULT_RULES, window_s: float = WINDOW_S,
                 heartbeat_s: dict | None = None):
        """record_event(t, device, link, kind, reason): where events go (Verifier.record_event);
        statuses: device -> DeviceStatus (Verifier.status), whose fields get `liveness` and
        `liveness_since` so reports and storage carry them; heartbeat_s: link (or "default") ->
        the period assumed for devices that announce none (DEFAULT_HEARTBEAT_S)."""
        self.record_event = record_event
        self.statuses = statuses
        self.rules = tuple(rules)
        self.window_s = float(window_s)
        self.heartbeat_s = {**DEFAULT_HEARTBEAT_S, **(heartbeat_s or {})}
        self.origin = None  # the clock's first reading: array times are relative to it
        self._devices = {}  # device id -> array('f')
        self._links = []  # link names, indexed by the LINK slot
        self._window = None  # the index of the window being counted
        self._next_scan = None
        self._due = None  # the earliest time tick() has anything to do: a window's end or a scan
        self._deadline = float("inf")  # relative: no online device can fall silent before it
        self._grace = 0.0  # relative time silence is counted from at the earliest (hold)
        self._excused_window = -1.0  # windows up to this one are excused from catch-up rules
        self.changed = set()  # devices whose liveness changed since the caller last took them
        self.silent = {}  # link -> devices silent now
        self.alarms = {}  # (rule name, link) -> devices in alarm now
        # (link, metric, percentile) -> value from elsewhere (hub workers: the whole fleet's, from
        # PostgreSQL), used instead of this watch's own devices' when set.
        self.fleet = None
        self._metric = {rule.name: METRICS.index(rule.metric) for rule in self.rules}
        self._learned = {rule.name: LEARNED.index(rule.metric) for rule in self.rules if rule.metric in LEARNED}

    # -- what arrives -------------------------------------------------------------------

    def observe(self, verdict, t: float) -> None:
        """One verdict of the verifier whose `status` dict this watch shares: a valid status
        message's fields (its announced pace, a death) are read from there."""
        outcome = verdict.outcome
        if outcome == "valid" or outcome == "rate_limited" or outcome == "unencrypted":
            state = self._device(verdict.device_id, verdict.link, t)
            rel = t - self.origin
            if rel > state[HEARD]:
                state[HEARD] = rel
            died = False
            if verdict.reason == "":  # a record
                if outcome == "valid":
                    size = len(verdict.payload)
                    state[REC] += 1
                    state[BYTES] += size
                    if size > state[LARGEST]:
                        state[LARGEST] = size
            elif outcome == "valid":  # a status message, kept by the verifier
                fields = self.statuses[verdict.device_id].fields
                died = not fields.get("online", True)
                if verdict.reason == BIRTH:
                    state[BIRTHS] += 1
                period = fields.get("heartbeat_s") or self._assumed_period(verdict.link)
                if period != state[PERIOD]:  # announced (a birth lost on the link: its heartbeats say it too)
                    state[PERIOD] = period
                    self._expect(state)
                if verdict.reason == BIRTH:
                    # A reconnect flushes what the device queued meanwhile: not a flood of records.
                    state[REJOINED] = self._window_of(t)
                    if fields.get("record_interval_s") and state[LEARNT] == 0:  # a first guess at its rate
                        state[NORMAL] = self.window_s / fields["record_interval_s"]
            if died:
                self._set(verdict.device_id, state, OFFLINE, rel)
            elif state[STATE] != 0:
                if state[STATE] == 2:
                    self.record_event(t, verdict.device_id, verdict.link, "back",
                                      "heard again after %s silent" % _span(rel - state[SINCE]))
                self._set(verdict.device_id, state, ONLINE, rel)
                state[EXCUSED] = self._window_of(t) + 1  # its catch-up is not a flood
        elif outcome == "forged" or outcome == "replay":
            state = self._devices.get(verdict.device_id)
            if state is not None:
                state[FORGED if outcome == "forged" else REPLAYED] += 1

    def _assumed_period(self, link) -> float:
        return self.heartbeat_s.get(link, self.heartbeat_s["default"])

    def _device(self, device, link, t):
        if self.origin is None:
            self.origin = t
        state = self._devices.get(device)
        if state is None:
            state = self._devices[device] = array("f", bytes(4 * (STREAK + len(self.rules))))
            state[HEARD] = state[SINCE] = t - self.origin
            state[PERIOD] = self._assumed_period(link)
            state[EXCUSED] = state[REJOINED] = -1.0
            state[LINK] = self._link_index(link)
            self._set(device, state, ONLINE, t - self.origin, new=True)
        elif self._links[int(state[LINK])] != link:  # it moved to another link type: so do its counts
            self._count(state, -1)
            state[LINK] = self._link_index(link)
            self._count(state, 1)
        return state

    def _count(self, state, change: int) -> None:
        # The per-link figures a device is part of: silent devices, devices in alarm per rule.
        link = self._links[int(state[LINK])]
        if state[STATE] == 2:
            self.silent[link] = self.silent.get(link, 0) + change
        for number, rule in enumerate(self.rules):
            if state[STREAK + number] >= _IN_ALARM:
                self.alarms[(rule.name, link)] = self.alarms.get((rule.name, link), 0) + change

    def _link_index(self, link) -> int:
        if link not in self._links:
            self._links.append(link)
        return self._links.index(link)

    def _set(self, device, state, liveness, rel, new=False):
        old = LIVENESS[int(state[STATE])]
        link = self._links[int(state[LINK])]
        if not new and old == liveness:
            return
        if not new and old == SILENT:
            self.silent[link] -= 1
        if liveness == SILENT:
            self.silent[link] = self.silent.get(link, 0) + 1
        state[STATE], state[SINCE] = LIVENESS.index(liveness), rel
        if liveness == ONLINE:
            self._expect(state)
        status = self.statuses.get(device)
        if status is None and new:  # a device heard first needs no status of its own: online is implied
            return
        if status is None:
            status = self.statuses[device] = DeviceStatus()
        status.fields["liveness"], status.fields["liveness_since"] = liveness, round(self.origin + rel, 3)
        self.changed.add(device)

    # -- the clock ------------------------------------------------------------------------

    def hold(self, now: float) -> None:
        """The hub saw nothing until now (it was stopped, cut from the broker, or could not
        store): no device's silence counts from before now, and the catch-up is excused."""
        if self.origin is None:
            self.origin = now
        self._grace = max(self._grace, now - self.origin)
        self._excused_window = max(self._excused_window, self._window_of(now) + 1)

    def tick(self, now: float) -> None:
        """Advance the watch's clock to now: close behaviour windows, check liveness."""
        if self._due is not None and now < self._due:  # the common case: once per message
            return
        if self.origin is None:
            return
        if self._window is None:
            self._window = self._window_of(now)
        while self._window_of(now) > self._window:
            self._close_window(self._window, self._window_of(now))
        if self._next_scan is None:
            self._next_scan = (now // SCAN_S + 1) * SCAN_S
        if now >= self._next_scan:
            scan_at = (now // SCAN_S) * SCAN_S - self.origin
            if scan_at > self._deadline:
                self._scan(scan_at)
            self._next_scan = (now // SCAN_S + 1) * SCAN_S
        self._due = min((self._window + 1) * self.window_s, self._next_scan)

    def _window_of(self, t: float) -> int:
        return int(t // self.window_s)

    def _scan(self, rel_now: float) -> None:
        grace, earliest = self._grace, float("inf")
        for device, state in self._devices.items():
            if state[STATE] == 0:  # online
                deadline = max(state[HEARD], grace) + SILENT_AFTER * state[PERIOD]
                if rel_now > deadline:
                    self._set(device, state, SILENT, deadline)
                    self.record_event(self.origin + deadline, device, self._links[int(state[LINK])], "silent",
                                      "nothing authentic for %d heartbeat periods of %s, and no death"
                                      % (SILENT_AFTER, _span(state[PERIOD])))
                elif deadline < earliest:
                    earliest = deadline
        # Deadlines only move later (heard, grace); what can bring one earlier lowers this itself.
        self._deadline = earliest

    def _expect(self, state) -> None:
        # A device online anew, or with a shorter period: its deadline may come before the others'.
        deadline = max(state[HEARD], self._grace) + SILENT_AFTER * state[PERIOD]
        if deadline < self._deadline:
            self._deadline = deadline

    # -- behaviour windows ------------------------------------------------------------------

    def _close_window(self, window: int, now_window: int) -> None:
        end = (window + 1) * self.window_s
        fleet = self._fleet_normals()
        for device, state in self._devices.items():
            self._judge(device, state, window, end, fleet)
        missed = now_window - window - 1
        self._window = window + 1 if missed <= MISSED_WINDOWS_EVALUATED else now_window - MISSED_WINDOWS_EVALUATED

    def fleet_wanted(self) -> set:
        """The (metric, percentile) pairs the fleet rules need."""
        return {(rule.metric, rule.fleet) for rule in self.rules if rule.fleet is not None}

    def learned_normals(self):
        """(device, link, [its normal of each LEARNED metric]) for every device that learned its own."""
        for device, state in self._devices.items():
            if state[LEARNT] >= LEARN_WINDOWS:
                yield device, self._links[int(state[LINK])], [state[NORMAL + n] for n in range(len(LEARNED))]

    def _fleet_normals(self) -> dict:
        """(link index, metric, percentile) -> value of the link type's learned normals."""
        wanted = self.fleet_wanted()
        if not wanted:
            return {}
        if self.fleet is not None:
            return {(self._links.index(link), metric, p): value for (link, metric, p), value in self.fleet.items()
                    if link in self._links}
        normals = {}
        for state in self._devices.values():
            if state[LEARNT] >= LEARN_WINDOWS:
                normals.setdefault(int(state[LINK]), []).append(state)
        fleet = {}
        for link, states in normals.items():
            if len(states) >= FLEET_MIN:
                for metric, p in wanted:
                    slot = NORMAL + LEARNED.index(metric)
                    fleet[(link, metric, p)] = percentile([s[slot] for s in states], p)
        return fleet

    def _judge(self, device, state, window, end, fleet) -> None:
        records = state[REC]
        values = (records, state[BYTES] / records if records else None, state[LARGEST] if records else None,
                  state[BIRTHS], state[FORGED], state[REPLAYED])
        excused = window <= self._excused_window or window <= state[EXCUSED]
        rejoined = window == state[REJOINED]  # its records after a reconnect, not its births
        breached = set()
        if records or state[BIRTHS] or state[FORGED] or state[REPLAYED] or any(state[STREAK:]):
            self._apply_rules(device, state, values, excused, rejoined, breached, end, fleet)
        # else a quiet window with no alarm pending: no rule can change anything, only the normal learns
        if state[STATE] == 0:  # what a live device does is its normal, except what breached a rule
            for number, metric in enumerate(LEARNED):
                value = values[_LEARNED_AT[number]]
                if value is None or metric in breached or _caught_up(metric, excused, rejoined):
                    continue
                slot = NORMAL + number
                if state[LEARNT] < LEARN_WINDOWS:  # the mean of the first windows
                    state[slot] += (value - state[slot]) / (state[LEARNT] + 1)
                elif value != state[slot]:  # then a running median
                    step = LEARN_STEP * max(state[slot], 1.0)
                    state[slot] += step if value > state[slot] else -min(step, state[slot] - value)
            if records or state[LEARNT]:
                state[LEARNT] = min(state[LEARNT] + 1, 1e6)
        for slot in range(ACC, NORMAL):
            state[slot] = 0.0

    def _apply_rules(self, device, state, values, excused, rejoined, breached, end, fleet) -> None:
        learnt = state[LEARNT] >= LEARN_WINDOWS
        link = self._links[int(state[LINK])]
        for number, rule in enumerate(self.rules):
            value = values[self._metric[rule.name]]
            if value is None or _caught_up(rule.metric, excused, rejoined):
                continue
            learned = self._learned.get(rule.name)
            normal = state[NORMAL + learned] if learned is not None and learnt else None
            fleet_value = fleet.get((int(state[LINK]), rule.metric, rule.fleet))
            bound = rule.bound(normal, fleet_value)
            if bound is None:
                continue
            breach = value > bound
            if breach:
                breached.add(rule.metric)
            self._streak(device, link, state, STREAK + number, rule, breach, value, bound, normal, fleet_value, end)

    def _streak(self, device, link, state, slot, rule, breach, value, bound, normal, fleet_value, end) -> None:
        in_alarm = state[slot] >= _IN_ALARM
        count = state[slot] - _IN_ALARM if in_alarm else state[slot]
        count = count + 1 if breach != in_alarm else 0
        key = (rule.name, link)
        if not in_alarm and count >= rule.alarm_after:
            state[slot] = _IN_ALARM
            self.alarms[key] = self.alarms.get(key, 0) + 1
            self.record_event(end, device, link, "behaviour_alarm",
                              "%s: %s %.4g above %.4g (%s) for %d window%s" % (
                                  rule.name, rule.metric, value, bound, rule.describe_bound(normal, fleet_value),
                                  rule.alarm_after, "" if rule.alarm_after == 1 else "s"))
        elif in_alarm and count >= rule.clear_after:
            state[slot] = 0.0
            self.alarms[key] -= 1
            self.record_event(end, device, link, "behaviour_clear",
                              "%s: %s %.4g within %.4g for %d windows" % (rule.name, rule.metric, value, bound,
                                                                          rule.clear_after))
        else:
            state[slot] = (_IN_ALARM if in_alarm else 0.0) + count

    # -- reading and restoring ------------------------------------------------------------------

    def liveness(self, device):
        """(liveness, since) of a device the watch has heard, else None."""
        state = self._devices.get(device)
        if state is None:
            return None
        return LIVENESS[int(state[STATE])], self.origin + state[SINCE]

    def in_alarm(self, device) -> list:
        """The names of the rules a device is in alarm for."""
        state = self._devices.get(device)
        if state is None:
            return []
        return [rule.name for number, rule in enumerate(self.rules) if state[STREAK + number] >= _IN_ALARM]

    def restore(self, device: str, link: str, fields: dict | None, now: float) -> None:
        """A device the hub had heard before it started at now, with its stored status fields
        (None when it never sent a status): its liveness as stored, its silence counted from
        now, its normal learned again."""
        if self.origin is None:
            self.origin = now
        fields = fields or {}
        liveness, since = fields.get("liveness", ONLINE), fields.get("liveness_since", now) - self.origin
        state = self._device(device, link, now)  # (which writes online into its fields)
        if fields.get("heartbeat_s"):
            state[PERIOD] = fields["heartbeat_s"]
            self._expect(state)
        self._set(device, state, liveness if liveness in LIVENESS else ONLINE, since, new=True)
        self.changed.discard(device)  # stored as it is


def _span(seconds: float) -> str:
    if seconds < 120:
        return "%.0f s" % seconds
    if seconds < 7200:
        return "%.0f min" % (seconds / 60)
    return "%.1f h" % (seconds / 3600)
