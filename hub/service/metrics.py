"""Prometheus metrics for `linkseal hub run`.

Frame and loss counters are read from the verifier at scrape time, so they cost nothing
per frame and continue across restarts (the verifier's counters are restored from
storage). Labels are bounded: link type and outcome, never a device.
"""

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from hub.core.counters import OUTCOME_OF
from hub.core.radio import link_figures
from hub.core.report import abnormal_reasons, entry
from hub.service.storage.sqlite import FAULT_KINDS


class VerifierCollector:
    def __init__(self, verifier):
        self.verifier = verifier

    def collect(self):
        frames = CounterMetricFamily("linkseal_frames", "Frames by link type and outcome.", labels=["link", "outcome"])
        lost = CounterMetricFamily("linkseal_lost_frames", "Sequence numbers never received intact, less those the "
                                   "devices dropped themselves or lost to a reset.", labels=["link"])
        source_drops = CounterMetricFamily("linkseal_source_dropped_frames", "Records devices dropped because their "
                                           "queue was full (from their status messages).", labels=["link"])
        on_device = CounterMetricFamily("linkseal_lost_on_device_frames", "Records a reset destroyed on the devices "
                                        "before they were sent (written off from the next birth).", labels=["link"])
        reused = CounterMetricFamily("linkseal_epoch_reuse", "Births announcing an epoch already born (a device "
                                     "restored from an image or cloned: its counters and keystream repeat).",
                                     labels=["link"])
        loss = GaugeMetricFamily("linkseal_loss_ratio", "Lost over expected frames since counting began.",
                                 labels=["link"])
        corrupt = GaugeMetricFamily("linkseal_corrupt_ratio", "Corrupt over received frames.", labels=["link"])
        abnormal = GaugeMetricFamily("linkseal_link_abnormal",
                                     "1 when loss or corruption is significantly above what the link type expects.",
                                     labels=["link"])
        for code, counters in list(self.verifier.link_counters.items()):
            name = self.verifier.link_names[code]
            for slot, outcome in OUTCOME_OF.items():
                frames.add_metric([name, outcome], counters[slot])
            item = entry(counters)
            lost.add_metric([name], item["lost"])
            source_drops.add_metric([name], item["source_drops"])
            on_device.add_metric([name], item["lost_on_device"])
            reused.add_metric([name], item["epoch_reuse"])
            loss.add_metric([name], item["loss_rate"])
            corrupt.add_metric([name], item["corrupt_rate"])
            abnormal.add_metric([name], 1.0 if abnormal_reasons(name, item) else 0.0)
        frames.add_metric(["none", "unknown_device"], self.verifier.unknown_device)
        return [frames, lost, source_drops, on_device, reused, loss, corrupt, abnormal, *self._radio()]

    def _radio(self) -> list:
        """LoRaWAN links' radio figures (hub/core/radio.py), summed per link: no per-device or
        per-gateway label (gateways are as many as the network has)."""
        uplinks = CounterMetricFamily("linkseal_radio_uplinks", "Authentic LoRaWAN uplinks received.", labels=["link"])
        after = CounterMetricFamily("linkseal_radio_lost_after_transmission", "Uplinks the devices sent that never "
                                    "reached the hub (frame counters never seen).", labels=["link"])
        before = GaugeMetricFamily("linkseal_radio_lost_before_transmission", "Records sealed but never sent (sequence "
                                   "numbers missing where no uplink was lost), as far as known.", labels=["link"])
        snr = GaugeMetricFamily("linkseal_radio_snr_median_db", "Median SNR of the best gateway, per spreading factor.",
                                labels=["link", "spreading_factor"])
        by_link = {}
        for device, status in list(self.verifier.status.items()):
            if status.radio is not None:
                by_link.setdefault(self.verifier.current_link(device), []).append(status.radio)
        for link, states in sorted(by_link.items()):
            figures = link_figures(states)
            uplinks.add_metric([link], figures["uplinks"])
            after.add_metric([link], figures["lost_after_transmission"])
            before.add_metric([link], figures["lost_before_transmission"])
            for sf, entry_ in figures["spreading_factors"].items():
                if entry_["snr_median"] is not None:
                    snr.add_metric([link, sf], entry_["snr_median"])
        return [uplinks, after, before, snr]


class WatchCollector:
    """The watch's figures per link type (hub/core/watch.py): devices silent now, devices in
    alarm per behaviour rule. Counts of devices, never a device label."""

    def __init__(self, watches):
        self.watches = watches  # one hub's watch, or those of a worker's partitions

    def collect(self):
        silent = GaugeMetricFamily("linkseal_silent_devices", "Devices heard before that sent nothing authentic for "
                                   "3 heartbeat periods, without a death.", labels=["link"])
        alarms = GaugeMetricFamily("linkseal_behaviour_alarm_devices", "Devices in alarm now, per behaviour rule "
                                   "(hub.toml [[behaviour]]) and link type.", labels=["behaviour", "link"])
        silent_by_link, alarms_by_rule = {}, {}
        for watch in self.watches:
            for link, count in dict(watch.silent).items():
                silent_by_link[link] = silent_by_link.get(link, 0) + count
            for key, count in dict(watch.alarms).items():
                alarms_by_rule[key] = alarms_by_rule.get(key, 0) + count
        for link, count in sorted(silent_by_link.items()):
            silent.add_metric([link], count)
        for (rule, link), count in sorted(alarms_by_rule.items()):
            alarms.add_metric([rule, link], count)
        return [silent, alarms]


class SinkCollector:
    """Each sink's state and backlog, read at scrape time; the label is the configured sink
    (a few, named by URL without credentials), never a device."""

    def __init__(self, forwarders):
        self.forwarders = forwarders

    def collect(self):
        up = GaugeMetricFamily("linkseal_sink_up", "1 when the sink's last delivery succeeded.", labels=["sink"])
        backlog = GaugeMetricFamily("linkseal_sink_backlog_records", "Stored records the sink has not "
                                    "acknowledged yet.", labels=["sink"])
        age = GaugeMetricFamily("linkseal_sink_backlog_oldest_age_seconds", "Age of the oldest record the sink "
                                "has not acknowledged (0 when none).", labels=["sink"])
        delivered = CounterMetricFamily("linkseal_sink_delivered_records", "Records the sink acknowledged since "
                                        "the hub started.", labels=["sink"])
        now = time.time()
        for forwarder in self.forwarders:
            count, oldest = forwarder.backlog()
            up.add_metric([forwarder.name], 1.0 if forwarder.up else 0.0)
            backlog.add_metric([forwarder.name], count)
            age.add_metric([forwarder.name], now - oldest if oldest else 0.0)
            delivered.add_metric([forwarder.name], forwarder.delivered)
        return [up, backlog, age, delivered]


class WorkerCollector:
    """A hub worker's partitions (docs/scale-out.md): which ones it is the active consumer of,
    and the frames counted in them (each partition's totals, loaded when the worker took it)."""

    def __init__(self, worker):
        self.worker = worker

    def collect(self):
        owned = GaugeMetricFamily("linkseal_partition_owned", "1 for each partition this worker is the active "
                                  "consumer of.", labels=["partition"])
        frames = CounterMetricFamily("linkseal_worker_frames", "Frames by link type and outcome in the partitions "
                                     "this worker holds.", labels=["link", "outcome"])
        partitions = dict(self.worker.partitions)
        for index in range(self.worker.partition_count):
            owned.add_metric([str(index)], 1.0 if index in partitions else 0.0)
        totals = {}
        for partition in partitions.values():
            verifier = partition.ingest.verifier
            for code, counters in list(verifier.link_counters.items()):
                for slot, outcome in OUTCOME_OF.items():
                    key = (verifier.link_names[code], outcome)
                    totals[key] = totals.get(key, 0) + counters[slot]
        for (link, outcome), value in sorted(totals.items()):
            frames.add_metric([link, outcome], value)
        commits = CounterMetricFamily("linkseal_worker_commits", "Batches this worker committed.")
        commits.add_metric([], self.worker.commits)
        return [owned, frames, commits, *WatchCollector([p.ingest.watch for p in partitions.values()]).collect()]


def serve_worker_metrics(worker, host: str, port: int) -> str:
    """Serve a hub worker's /metrics on host:port (port 0: any free port); returns the address."""
    registry = CollectorRegistry()
    registry.register(WorkerCollector(worker))
    server, _ = start_http_server(port, addr=host or "127.0.0.1", registry=registry)
    bound_host, bound_port = server.server_address[:2]
    return f"{bound_host}:{bound_port}"


class HubMetrics:
    def __init__(self, verifier, watch=None):
        self.address = None  # where /metrics is served, once serve() has run
        self.registry = CollectorRegistry()
        self.registry.register(VerifierCollector(verifier))
        if watch is not None:
            self.registry.register(WatchCollector([watch]))
        self.queue_depth = Gauge("linkseal_queue_depth", "Messages received from the broker, not yet committed.",
                                 registry=self.registry)
        self.ingest_lag = Gauge("linkseal_ingest_lag_seconds",
                                "From receipt of the oldest message in the last batch to its commit.",
                                registry=self.registry)
        self.prune_seconds = Histogram("linkseal_prune_step_seconds", "Time one retention step held the ingest "
                                       "path.", registry=self.registry,
                                       buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1))
        self.commit_seconds = Histogram("linkseal_storage_commit_seconds", "Time to commit one batch.",
                                        registry=self.registry,
                                        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))

        self.storage_fault = Gauge("linkseal_storage_fault", "1 while storage refuses writes for this reason "
                                   "(the hub then pauses and retries, acknowledging nothing).", ["kind"],
                                   registry=self.registry)
        for kind in FAULT_KINDS:
            self.storage_fault.labels(kind).set(0)

        self.client_id_conflicts = Counter("linkseal_client_id_conflicts", "Times the broker kept closing the "
                                           "hub's connection right after accepting it (another client with the same "
                                           "client id).", registry=self.registry)

    def set_storage_fault(self, kind: str | None) -> None:
        for each in FAULT_KINDS:
            self.storage_fault.labels(each).set(1 if each == kind else 0)

    def watch_forwarders(self, forwarders) -> None:
        if forwarders:
            self.registry.register(SinkCollector(forwarders))

    def serve(self, host: str, port: int) -> str:
        """Serve /metrics on host:port (port 0: any free port); returns the address bound."""
        server, _ = start_http_server(port, addr=host or "127.0.0.1", registry=self.registry)
        bound_host, bound_port = server.server_address[:2]
        return f"{bound_host}:{bound_port}"
