"""`linkseal hub run`: the MQTT adapter around the ingest path.

Two threads. The main thread runs the MQTT network loop (and receives SIGTERM/SIGINT); the
ingest thread verifies messages in batches, commits each batch, and only then acknowledges
its messages (paho manual ack), so a crash before the commit makes the broker redeliver.
Between them a bounded queue: when storage falls behind, the network loop blocks instead
of reading more, and the broker holds the backlog in the hub's persistent session.

Forwarders (hub/service/delivery/forwarder.py), one thread per sink, deliver committed records
inward; a commit wakes them. Only when a sink's backlog passes the bound does the ingest
thread stop taking batches (so stop acknowledging). Between batches the ingest thread also
runs retention a small step at a time.
"""

import queue
import random
import signal
import ssl
import threading
import time

import paho.mqtt.client as mqtt

from hub.core.report import abnormal_reasons, entry
from hub.service.delivery.forwarder import Forwarder, wait_for_room
from hub.service.ways_in.lorawan_source import LorawanSource
from hub.service.storage.sqlite import describe_fault, passing_fault

# Records and the devices' status messages (birth, death, heartbeat).
TOPICS = [("linkseal/v1/+/rec", 1), ("linkseal/v1/+/status", 1)]
_TOPIC_NAMES = [topic for topic, _ in TOPICS]  # for the log
CONNACK_TIMEOUT = 10.0  # a broker that accepts TCP but never answers is treated as down
# Two clients with one client id knock each other off the broker (MQTT 3.1.1, 3.1.4-2), each
# reconnecting within a second or two: this many connections in a row closed by the broker
# within SHORT_CONNECTION_S of being accepted is reported as a client id conflict.
SHORT_CONNECTIONS = 3
SHORT_CONNECTION_S = 5.0
# Holding up intake for this long or more counts as a stall the rate limits credit (a normal
# commit takes milliseconds; a full disk, a locked database or a sink far behind, seconds).
STALL_MIN_S = 1.0


class HubService:
    def __init__(self, broker, settings, ingest, log, metrics=None, load_devices=None, sinks=(), clock=time.time,
                 arrival_clock=None, lorawan=(), load_euis=None):
        """load_devices: returns the key file's DeviceKeys again, for SIGHUP reloads.
        sinks: (name, sink) pairs records are forwarded to; clock: the time retention uses;
        arrival_clock(topic, payload): the arrival time given to the verifier (default: now;
        a replay gives each message its time in the trace). lorawan: (server, broker) pairs,
        network servers read beside the broker (hub/service/ways_in/lorawan_source.py); load_euis:
        returns the key file's DevEUI -> device id, at start and on reloads."""
        self.broker = broker
        self.settings = settings
        self.ingest = ingest
        self.log = log
        self.metrics = metrics
        self.queue = queue.Queue(maxsize=settings.queue_size)
        self.stopping = threading.Event()
        self.exit_code = 0
        self.load_devices = load_devices
        self._reload = threading.Event()
        self._connected = False
        self._connected_at = 0.0
        self._short_connections = 0  # broker-closed connections in a row that lasted < SHORT_CONNECTION_S
        self._unstored_logged = False
        self.subscribed = threading.Event()  # the broker confirmed the record subscription
        self._rate_limited = {}  # link -> frames rate-limited since the last summary
        self._abnormal = {}  # link -> reasons last reported
        self._next_report = time.monotonic() + settings.report_interval
        self.clock = clock
        self.arrival_clock = arrival_clock
        self._last_arrival = 0.0  # the arrival time of the last message handled
        # Seconds intake was held up (queue full, broker unreachable), handed by the network
        # thread to the ingest thread, which credits them to the devices' rate limits.
        self._stalled = 0.0
        self._stalled_lock = threading.Lock()
        self._disconnected_at = None  # monotonic time the broker connection was lost
        self._sighted_at = None  # when the hub could see the devices again (handed to the ingest thread)
        self._next_prune = 0.0  # monotonic time of the next retention step
        self.forwarders = [Forwarder(name, sink, ingest.storage.path, log, self.stopping, settings.backoff_max,
                                     getattr(ingest.storage, "seal_key", None)) for name, sink in sinks]
        if metrics is not None:
            metrics.watch_forwarders(self.forwarders)
        self.client = self._make_client()
        self.load_euis = load_euis
        euis = load_euis() if load_euis else {}
        self.lorawan = [LorawanSource(server, where, f"{settings.client_id}-lorawan-{number}", euis, self._put, log,
                                      arrival_clock) for number, (server, where) in enumerate(lorawan, start=1)]

    # -- MQTT -------------------------------------------------------------------------

    def _make_client(self):
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.settings.client_id,
                             clean_session=False, protocol=mqtt.MQTTv311, manual_ack=True)
        if self.broker.tls:
            client.tls_set(ca_certs=self.broker.ca_file, certfile=self.broker.cert_file,
                           keyfile=self.broker.key_file, cert_reqs=ssl.CERT_REQUIRED)
        if self.broker.username:
            client.username_pw_set(self.broker.username, self.broker.password)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self.log("broker_refused", reason=str(reason_code))
            return
        client.subscribe(TOPICS)
        self._connected = True
        self._connected_at = time.monotonic()
        if self._disconnected_at is not None:  # the broker kept the devices' frames meanwhile
            self._add_stall(self._connected_at - self._disconnected_at)
            self._disconnected_at = None
            self._sighted_at = time.time()  # silence while the hub was cut off is not the devices'
        self.log("connected", broker=f"{self.broker.host}:{self.broker.port}",
                 session_present=bool(flags.session_present))

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        if any(code.is_failure for code in reason_codes):
            self.log("subscribe_refused", topics=_TOPIC_NAMES, reason=str(reason_codes[0]))
            return
        self.subscribed.set()
        self.log("subscribed", topics=_TOPIC_NAMES)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        if self._connected and not self.stopping.is_set():
            self.log("disconnected", reason=str(reason_code))
            self._count_short_connection(time.monotonic() - self._connected_at)
        if self._connected:
            self._disconnected_at = time.monotonic()
        self._connected = False

    def _count_short_connection(self, lasted: float) -> None:
        self._short_connections = self._short_connections + 1 if lasted < SHORT_CONNECTION_S else 0
        if self._short_connections == SHORT_CONNECTIONS:  # once per run of them
            self.log("client_id_conflict", client_id=self.settings.client_id, closed_within_s=SHORT_CONNECTION_S,
                     times=SHORT_CONNECTIONS, note="the broker keeps closing this connection right after accepting "
                     "it: another client (a second hub?) is probably connected with the same client id; give each "
                     "hub its own client_id in hub.toml [mqtt]")
            if self.metrics:
                self.metrics.client_id_conflicts.inc()

    def _on_message(self, client, userdata, message):
        t = time.time() if self.arrival_clock is None else self.arrival_clock(message.topic, message.payload)
        self._put((message.topic, message.payload, t, message.mid, message.qos, message.dup, client, None, None))

    def _put(self, item) -> None:
        """Queue (topic, payload, t, mid, qos, dup, client to acknowledge on, refused, radio) for
        the ingest thread (Ingest.handle); blocks while storage is behind."""
        while not self.stopping.is_set():
            blocked = time.monotonic()
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:  # storage is behind: stop reading; the broker keeps the rest
                self._add_stall(time.monotonic() - blocked)
        # Stopping: leave it unacknowledged, the broker redelivers it to the next run.

    def _held_up(self, seconds: float) -> None:
        # Unacknowledged messages fill the broker's in-flight window, after which it keeps the
        # devices' frames back: a commit or a sink wait this long is a stall, not a pause of theirs.
        # (With a queue smaller than that window, a full queue may count the same stall again:
        # the credit is then at most twice the stall's.)
        if seconds >= STALL_MIN_S:
            self._add_stall(seconds)

    def _add_stall(self, seconds: float) -> None:
        if self.arrival_clock is None:  # a replay runs on its trace's times, not on stalls of this run
            with self._stalled_lock:
                self._stalled += seconds

    def _network_loop(self, worker):
        delay = 1.0
        where = f"{self.broker.host}:{self.broker.port}"
        while not self.stopping.is_set():
            failure = None
            try:
                self.client.connect(self.broker.host, self.broker.port, self.settings.keepalive)
            except (OSError, ssl.SSLError) as exc:
                failure = exc.strerror or str(exc)
            else:
                rc = mqtt.MQTT_ERR_SUCCESS
                connack_deadline = time.monotonic() + CONNACK_TIMEOUT
                while not self.stopping.is_set() and rc == mqtt.MQTT_ERR_SUCCESS:
                    rc = self.client.loop(timeout=0.2)
                    if self._connected:
                        delay = 1.0
                    elif time.monotonic() > connack_deadline:
                        self.client.disconnect()
                        break
                if self.stopping.is_set():
                    break
                if self._connected:
                    self._on_disconnect(self.client, None, None, mqtt.error_string(rc), None)
                elif rc == mqtt.MQTT_ERR_SUCCESS:
                    failure = f"no CONNACK within {CONNACK_TIMEOUT:g} s"
                else:  # closed before a CONNACK: TLS refused, bad credentials, not an MQTT broker
                    failure = f"closed before the broker accepted the connection ({mqtt.error_string(rc)})"
            wait = min(delay, self.settings.backoff_max) * random.uniform(0.5, 1.0)
            if failure:
                self.log("connect_failed", broker=where, error=failure, retry_in_s=round(wait, 2))
            self.stopping.wait(wait)
            delay = min(delay * 2, self.settings.backoff_max)
        self.log("stopping")
        # Keep the loop turning while the ingest thread commits and acknowledges its last batch.
        while worker.is_alive():
            self.client.loop(timeout=0.05)
        self.client.disconnect()
        self.client.loop(timeout=0.2)

    # -- ingest -----------------------------------------------------------------------

    def _work(self):
        try:
            while True:
                try:
                    first = self.queue.get(timeout=0.2)
                except queue.Empty:
                    if self.stopping.is_set():
                        return
                    self._periodic()
                    continue
                if self.forwarders:  # a sink far behind: stop acknowledging, the broker keeps the rest
                    held = time.monotonic()
                    wait_for_room(self.forwarders, self.settings.max_backlog, self.stopping, self.log,
                                  self.ingest.storage.last_record_id)
                    self._held_up(time.monotonic() - held)
                    if self.stopping.is_set():
                        return
                items = [first]
                while len(items) < self.settings.batch_size:
                    try:
                        items.append(self.queue.get_nowait())
                    except queue.Empty:
                        break
                self._process(items)
                self._periodic()
        except Exception as exc:  # storage damaged: stop without acknowledging what is not stored
            self.log("storage_error", error=describe_fault(exc, self.ingest.storage.path))
            self.exit_code = 1
            self.stopping.set()

    def _commit(self) -> bool:
        """Commit, waiting out passing storage faults (disk full, locked, read-only): nothing is
        acknowledged meanwhile, so the broker keeps the backlog. False only when stopping."""
        fault, delay = None, 0.5
        while True:
            try:
                self.ingest.commit()
            except Exception as exc:
                kind = passing_fault(exc)
                if kind is None:
                    raise
                if kind != fault:  # the cause, once (and again only if it changes)
                    self.log(kind, error=describe_fault(exc, self.ingest.storage.path),
                             action="not acknowledging upstream; retrying")
                    self._set_fault(kind)
                fault = kind
                if self.stopping.wait(delay):
                    if not self._unstored_logged:  # once, though each message left in the queue comes here
                        self.log("stopping_unstored", reason=kind, note="the broker redelivers what was not stored")
                        self._unstored_logged = True
                    return False
                delay = min(delay * 2, self.settings.backoff_max)
                continue
            if fault:
                self.log("storage_recovered", after=fault)
                self._set_fault(None)
                self._sighted_at = time.time()  # the backlog the broker kept is on its way
            return True

    def _set_fault(self, kind):
        if self.metrics:
            self.metrics.set_storage_fault(kind)

    def _process(self, items):
        with self._stalled_lock:
            stalled, self._stalled = self._stalled, 0.0
        if stalled:  # on the hub's clock, which is the arrival times' (stalls are not counted in replays)
            self.ingest.verifier.credit_stall(stalled, time.time())
            self._sighted_at = time.time()
        self._hold_watch()
        for topic, payload, t, _, _, dup, _, refused, radio in items:
            try:
                verdict = self.ingest.handle(topic, payload, t, dup, refused, radio)
            except Exception as exc:  # must not happen (fuzzed); never let one message stop the hub
                self.log("internal_error", error=type(exc).__name__, topic=topic[:120])
                continue
            if verdict.outcome == "rate_limited":
                self._rate_limited[verdict.link] = self._rate_limited.get(verdict.link, 0) + 1
        self._last_arrival = items[-1][2]
        started = time.perf_counter()
        if not self._commit():
            return
        self._held_up(time.perf_counter() - started)
        for forwarder in self.forwarders:  # new records to deliver
            forwarder.wake.set()
        committed = time.time()
        for _, _, _, mid, qos, _, client, _, _ in items:
            client.ack(mid, qos)
        if self.metrics:
            self.metrics.commit_seconds.observe(time.perf_counter() - started)
            self.metrics.ingest_lag.set(committed - items[0][2])
            self.metrics.queue_depth.set(self.queue.qsize())

    def _hold_watch(self) -> None:
        # The hub was blind (cut off from the broker, stalled, unable to store) until then: the
        # watch counts no device's silence from before it and excuses the catch-up.
        sighted, self._sighted_at = self._sighted_at, None
        if sighted is not None and self.arrival_clock is None:
            self.ingest.watch.hold(sighted)

    def _tick_watch(self) -> None:
        # Only while connected: with the broker out of reach, the hub hears nothing from anyone.
        # And only with nothing queued: what waits in the queue was heard, at its arrival time.
        if self.arrival_clock is not None:
            self.ingest.tick(self._last_arrival)  # a replay's own time line
        elif self._connected and self.queue.empty():
            self._hold_watch()
            self.ingest.tick(time.time())
        if self.ingest.verifier.events:  # silent devices and alarms are stored at once
            self._commit()

    def _reload_keys(self):
        # On the ingest thread, between batches: the verifier is never changed mid-batch.
        self._reload.clear()
        try:
            devices = self.load_devices()
        except Exception as exc:  # a bad key file must not stop the hub: keep the old keys
            self.log("keys_reload_failed", error=str(exc))
            return
        self.ingest.verifier.update_devices(devices)
        if self.load_euis is not None:
            euis = self.load_euis()
            for source in self.lorawan:
                source.devices_by_eui = euis
        self.log("keys_reloaded", devices=len(devices), revoked=sum(d.revoked for d in devices))

    def _prune(self):
        """One retention step; the next one right after the next batch while there is work,
        else after the prune interval, so ingest never waits for more than one small step."""
        if time.monotonic() < self._next_prune:
            return
        started = time.perf_counter()
        try:
            done = self.ingest.storage.prune_step(self.clock(), self.settings.retention)
        except Exception as exc:
            if passing_fault(exc) is None:
                raise
            self._next_prune = time.monotonic() + self.settings.prune_interval  # the next commit reports it
            return
        if self.metrics:
            self.metrics.prune_seconds.observe(time.perf_counter() - started)
        busy = any(done.values())
        if busy:
            self.log("pruned", **done)
        self._next_prune = 0.0 if busy else time.monotonic() + self.settings.prune_interval

    def _log_sinks(self):
        for forwarder in self.forwarders:
            backlog, oldest = forwarder.backlog()
            if backlog or forwarder.up is False:
                self.log("sink_backlog", sink=forwarder.name, up=bool(forwarder.up), records=backlog,
                         oldest_age_s=round(time.time() - oldest, 1) if oldest else 0)

    def _periodic(self):
        """Between batches: a requested key reload and a retention step; once per report
        interval, log lines about rate limiting, sinks and the link health events."""
        if self._reload.is_set():
            self._reload_keys()
        self._prune()
        self._tick_watch()
        if time.monotonic() < self._next_report:
            return
        self._next_report = time.monotonic() + self.settings.report_interval
        self._log_sinks()
        if self._rate_limited:
            self.log("rate_limited", frames_by_link=dict(self._rate_limited))
            self._rate_limited = {}
        verifier = self.ingest.verifier
        now = time.time() if self.arrival_clock is None else self._last_arrival  # a replay's own time line
        for name, counters in verifier.links():
            reasons = abnormal_reasons(name, entry(counters))
            if reasons and reasons != self._abnormal.get(name):
                verifier.record_event(now, None, name, "abnormal_link", "; ".join(reasons))
                self.log("abnormal_link", link=name, reason="; ".join(reasons))
            elif not reasons and self._abnormal.get(name):
                self.log("link_normal", link=name)
            self._abnormal[name] = reasons
        self._commit()

    # -- lifecycle --------------------------------------------------------------------

    def request_reload(self, *_):
        if self.load_devices is not None:
            self._reload.set()

    def stop(self, *_):
        # Also the SIGTERM/SIGINT handler: it may interrupt the main thread inside self.log, so
        # it only sets the event (logging here could wait for ever on the log's own lock).
        self.stopping.set()

    def run(self, handle_signals: bool = True) -> int:
        """Run until stop() (SIGTERM or SIGINT when handle_signals); returns the exit status."""
        if handle_signals:
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
            signal.signal(signal.SIGHUP, self.request_reload)
        if self.arrival_clock is None:
            self.ingest.resume(time.time())
        worker = threading.Thread(target=self._work, name="ingest", daemon=True)
        worker.start()
        for forwarder in self.forwarders:
            forwarder.start()
        for source in self.lorawan:
            source.start()
        self.log("started", broker=f"{self.broker.host}:{self.broker.port}", tls=self.broker.tls,
                 devices=self.ingest.verifier.device_count, metrics=self.metrics.address if self.metrics else None)
        self._network_loop(worker)
        worker.join()
        for source in self.lorawan:  # after the last commit's acknowledgements
            source.stop()
        for forwarder in self.forwarders:
            forwarder.join()
        self.ingest.storage.close()
        self.log("stopped", exit_code=self.exit_code)
        return self.exit_code
