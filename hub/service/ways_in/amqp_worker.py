"""Hub workers on RabbitMQ: records partitioned by device over quorum queues, state in PostgreSQL.

Topology (`hub topology`, declare()): devices publish MQTT 3.1.1 to RabbitMQ's MQTT plugin,
which turns `linkseal/v1/<device>/rec` into routing key `linkseal.v1.<device>.rec` on
amq.topic. An exchange-to-exchange binding sends records on to HASH_EXCHANGE, an
x-consistent-hash exchange over N quorum queues (PARTITION_QUEUE) declared with
x-single-active-consumer: the routing key names the device, so each device's records go to
exactly one queue, in order, and each queue has one active consumer at a time. Status
messages (`.../status`) hash elsewhere, so they go to STATUS_QUEUE, and whichever worker
takes one publishes it again to HASH_EXCHANGE under the device's record key (header
STATUS_HEADER), with publisher confirms, before acknowledging it: it lands in the device's
partition, behind the records already queued there.

A worker consumes every partition queue; RabbitMQ makes it the active consumer of some
(the first consumer registered on a queue is its active one, so the first worker to start
would hold them all: each worker says it is alive in PostgreSQL every BEAT_S seconds, and one
that holds more than its share, ceil(partitions / live workers), hands one partition a beat
back: it commits, cancels that consumer and registers again at the back of the queue's line,
so the next worker in line becomes active). On
the first delivery from a queue it claims the partition in PostgreSQL (a new fencing token,
hub/service/storage/postgres.py), loads the state of that partition's devices, and from then on
verifies like the embedded hub (Ingest, Verifier): a batch is committed in one transaction,
then its deliveries are acknowledged. A crash between the two redelivers the batch: the
window counts those frames as redelivered and the records table keeps one row each.
"""

import functools
import math
import os
import socket
import threading
import time
from urllib.parse import unquote, urlsplit

from hub.core.partitions import (
    HASH_EXCHANGE,
    PARTITION_QUEUE,
    RECORD_KEY,
    STATUS_HEADER,
    STATUS_KEY,
    STATUS_QUEUE,
    topic_of,
)
from hub.service.config import ConfigError

# Binding weight of every queue on the consistent-hash ring: weight "1" spread devices
# 2k/5k/3k/10k over 4 queues when measured; more points per queue even that out.
BINDING_WEIGHT = "100"
MAX_PARTITIONS = 1024
BEAT_S = 2.0  # how often a worker says it is alive; it counts as gone after 3 beats of silence


def amqp_parameters(url: str, username=None, password=None, option="--broker") -> list:
    """pika connection parameters for amqp://HOST:PORT[,HOST:PORT...][/VHOST]: one per node of a
    cluster, tried in turn (credentials come from the options, never the URL)."""
    import pika

    parts = urlsplit(url)
    if parts.scheme != "amqp" or not parts.netloc:
        raise ConfigError(f"{option} {url!r}: expected amqp://HOST:PORT[,HOST:PORT...][/VHOST]")
    if "@" in parts.netloc:
        raise ConfigError(f"{option}: put the user name in --username and the password in LINKSEAL_MQTT_PASSWORD or "
                          "--password-file, not in the URL")
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    credentials = pika.PlainCredentials(username or "guest", password if password is not None else "guest")
    nodes = []
    for node in parts.netloc.split(","):
        host, _, port = node.rpartition(":") if ":" in node else (node, "", "5672")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{option} {url!r}: {node!r} is not HOST:PORT with a port in 1..65535")
        nodes.append(pika.ConnectionParameters(host, int(port), vhost, credentials, heartbeat=10,
                                               blocked_connection_timeout=30, connection_attempts=1))
    return nodes


def _where(parameters) -> str:
    return ",".join(f"{p.host}:{p.port}" for p in parameters)


def _queue_exists(connection, name: str) -> bool:
    import pika

    channel = connection.channel()
    try:
        channel.queue_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker:
        return False  # 404: the broker closed this channel, which is all it was for
    channel.close()
    return True


def count_partitions(connection) -> int:
    """How many partition queues the topology has (0: none declared)."""
    count = 0
    while count < MAX_PARTITIONS and _queue_exists(connection, PARTITION_QUEUE.format(count)):
        count += 1
    return count


def declare(parameters, partitions: int) -> str:
    """Declare the topology, idempotently; refuses to change the number of partitions."""
    import pika

    try:
        connection = pika.BlockingConnection(parameters)
    except pika.exceptions.AMQPError as exc:
        raise ConfigError(f"--broker amqp://{_where(parameters)}: cannot connect "
                          f"({type(exc).__name__}{': ' + str(exc) if str(exc) else ''})") from None
    try:
        _declare(connection, partitions)
    except (pika.exceptions.ChannelClosedByBroker, pika.exceptions.ConnectionClosedByBroker) as exc:
        raise ConfigError(_refusal(parameters, exc)) from None  # one line, with what to do about it
    finally:
        if connection.is_open:
            connection.close()
    return (f"{partitions} partitions: quorum queues {PARTITION_QUEUE.format(0)}..{PARTITION_QUEUE.format(partitions - 1)}"
            f" (single active consumer) behind the consistent-hash exchange {HASH_EXCHANGE}; status messages via "
            f"{STATUS_QUEUE}")


def _declare(connection, partitions: int) -> None:
    existing = count_partitions(connection)
    if existing and existing != partitions:
        raise ConfigError(
            f"--partitions {partitions}: the broker already has {existing} partitions; changing the number under "
            "traffic would let two workers hold one device. Stop the devices' traffic, let the workers drain "
            "every queue, stop them, delete the linkseal.partition.* queues, then declare again: each device's "
            "state follows it to its new partition (docs/scale-out.md)")
    channel = connection.channel()
    channel.exchange_declare(HASH_EXCHANGE, "x-consistent-hash", durable=True)
    channel.exchange_bind(HASH_EXCHANGE, "amq.topic", RECORD_KEY)
    for index in range(partitions):
        name = PARTITION_QUEUE.format(index)
        channel.queue_declare(name, durable=True, arguments={"x-queue-type": "quorum",
                                                            "x-single-active-consumer": True})
        channel.queue_bind(name, HASH_EXCHANGE, BINDING_WEIGHT)
    channel.queue_declare(STATUS_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_bind(STATUS_QUEUE, "amq.topic", STATUS_KEY)


def _refusal(parameters, exc) -> str:
    """What the broker's refusal of a declaration means for the operator."""
    text = exc.reply_text or str(exc)
    if "x-consistent-hash" in text:
        return (f"--broker amqp://{_where(parameters)}: the broker has no x-consistent-hash exchange type: enable "
                "the plugin with `rabbitmq-plugins enable rabbitmq_consistent_hash_exchange` (and rabbitmq_mqtt for "
                "the devices) on every node, then declare again")
    if exc.reply_code == 403:
        return (f"--broker amqp://{_where(parameters)}: refused ({text}): `hub topology` needs an administrator's "
                "account; the workers' account may only consume")
    return f"--broker amqp://{_where(parameters)}: the broker refused the declaration ({text})"


class _Partition:
    """A partition this worker is the active consumer of: its hub, and the deliveries not yet acknowledged."""

    def __init__(self, index, channel, storage, ingest, devices):
        self.index, self.channel, self.storage, self.ingest = index, channel, storage, ingest
        self.devices = devices  # device ids whose state this partition has (loaded, or looked up)
        self.last_tag = None
        self.oldest = None  # monotonic time of the oldest unacknowledged delivery


class Worker:
    def __init__(self, parameters, db_url: str, new_verifier, devices, settings, log, load_devices=None,
                 owner: str | None = None, commit_interval: float = 0.1):
        """new_verifier(devices): a fresh Verifier (one per partition) for the key file's devices;
        load_devices(): the key file's devices again, for SIGHUP reloads."""
        self.parameters = parameters
        self.db_url = db_url
        self.new_verifier = new_verifier
        self.devices = devices
        self.load_devices = load_devices
        self.reload = threading.Event()
        self.settings = settings
        self.log = log
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self.commit_interval = commit_interval
        self.stopping = threading.Event()
        self.partitions = {}  # index -> _Partition
        self.consumers = {}  # index -> (channel, consumer tag)
        self.registry = None
        self.partition_count = 0  # how many the topology has, once connected
        self.commits = 0
        # Fault injection for the tests' crash-after-commit case: exit (as if killed) after this
        # many commits, before acknowledging the last one's deliveries.
        exit_after = os.environ.get("LINKSEAL_FAULT_EXIT_AFTER_COMMITS")
        self._commits_left = int(exit_after) if exit_after else None
        self._next_share = 0.0  # when this worker next shares its devices' normals (_share_normals)

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> int:
        import pika

        from hub.service.storage.postgres import FleetNormals, WorkerRegistry

        self.registry = WorkerRegistry(self.db_url, self.owner)  # StorageError (exit 2) if PostgreSQL is not there
        self.fleet_normals = FleetNormals(self.db_url)
        try:
            self._serve_until_stopped(pika)
        finally:
            try:
                self.registry.leave()
                self.registry.close()
                self.fleet_normals.close()
            except Exception:  # PostgreSQL gone at shutdown: the entry ages out by itself
                pass
        return 0

    def _serve_until_stopped(self, pika) -> None:
        import psycopg

        from hub.service.storage.postgres import FleetNormals, WorkerRegistry
        from hub.service.storage.sqlite import StorageError

        while not self.stopping.is_set():
            try:
                self._serve(pika.BlockingConnection(self.parameters))
            except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError, OSError) as exc:
                self.log("broker_unreachable", broker=_where(self.parameters), error=str(exc) or type(exc).__name__)
                self.stopping.wait(1.0)
            except (psycopg.Error, StorageError) as exc:
                # PostgreSQL is away: nothing was acknowledged since the last commit, and closing
                # the AMQP connection gave those deliveries back to the queues. Try again.
                self.log("storage_unavailable", error=str(exc).strip().splitlines()[0])
                self.stopping.wait(2.0)
                try:
                    self.registry.close()
                    self.fleet_normals.close()
                    self.registry = WorkerRegistry(self.db_url, self.owner)
                    self.fleet_normals = FleetNormals(self.db_url)
                except (psycopg.Error, StorageError):
                    continue
        self._drop_all()

    def _serve(self, connection) -> None:
        try:
            count = count_partitions(connection)
            if count == 0:
                raise ConfigError("the broker has no linkseal partitions: run `linkseal hub topology` first")
            self.partition_count = count
            for index in range(count):
                channel = connection.channel()
                channel.basic_qos(prefetch_count=self.settings.batch_size * 2)
                self._consume(index, channel)
            status_channel = connection.channel()
            status_channel.confirm_delivery()
            status_channel.basic_qos(prefetch_count=100)
            status_channel.basic_consume(STATUS_QUEUE, self._on_status, auto_ack=False)
            self.log("connected", broker=_where(self.parameters), partitions=count,
                     owner=self.owner)
            next_beat = 0.0
            while not self.stopping.is_set():
                connection.process_data_events(time_limit=self.commit_interval / 2)
                self._commit_due()
                if self.reload.is_set():
                    self._reload_keys()
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + BEAT_S
                    self._balance(count)
                    self._tick_watches()
            self._commit_due(force=True)
        finally:
            self._drop_all()
            if connection.is_open:
                connection.close()

    def _consume(self, index, channel) -> None:
        tag = channel.basic_consume(PARTITION_QUEUE.format(index), functools.partial(self._on_record, index),
                                    auto_ack=False)
        self.consumers[index] = (channel, tag)

    def _balance(self, count: int) -> None:
        """Hand one partition back when holding more than this worker's share."""
        live = self.registry.beat(alive_within=3 * BEAT_S)
        share = math.ceil(count / max(1, live))
        if len(self.partitions) <= share:
            return
        index = max(self.partitions)
        partition = self.partitions[index]
        if partition.oldest is not None:
            self._commit(partition)
        channel, tag = self.consumers[index]
        channel.basic_cancel(tag)  # the next consumer in the queue's line becomes the active one
        self._drop(index)
        self._consume(index, channel)  # back in line, as a standby
        self.log("partition_released", partition=index, share=share, live_workers=live)

    def _on_status(self, channel, method, properties, body) -> None:
        # Publish it again into the device's partition, confirmed, before acknowledging it.
        import pika

        record_key = method.routing_key[: -len(".status")] + ".rec"
        channel.basic_publish(HASH_EXCHANGE, record_key, body,
                              pika.BasicProperties(delivery_mode=2, headers={STATUS_HEADER: 1}))
        channel.basic_ack(method.delivery_tag)

    def _on_record(self, index, channel, method, properties, body) -> None:
        partition = self.partitions.get(index) or self._take(index, channel)
        status = bool(properties.headers and properties.headers.get(STATUS_HEADER))
        topic = topic_of(method.routing_key, status)
        device = topic.split("/")[2] if topic.count("/") == 3 else None
        if device is not None and device not in partition.devices:
            self._adopt(partition, device)
        partition.ingest.handle(topic, body, time.time(), method.redelivered)
        partition.last_tag = method.delivery_tag
        if partition.oldest is None:
            partition.oldest = time.monotonic()
        if partition.ingest.pending >= self.settings.batch_size:
            self._commit(partition)

    # -- partitions -----------------------------------------------------------------------

    def _take(self, index, channel) -> _Partition:
        """This worker is the queue's active consumer now: claim the partition, load its state."""
        from hub.service.ingest import Ingest
        from hub.service.storage.postgres import PartitionStorage, claim

        token = claim(self.db_url, index, self.owner)
        storage = PartitionStorage(self.db_url, index, token)
        stored = storage.load()
        ingest = Ingest(self.new_verifier(self.devices), storage, stored=stored,
                        watch_options=self.settings.watch_options())
        ingest.resume(time.time())  # the queue kept what came while no worker held the partition
        partition = _Partition(index, channel, storage, ingest, {device for device, _ in stored.devices})
        self.partitions[index] = partition
        self.log("partition_taken", partition=index, token=token, owner=self.owner)
        return partition

    def _reload_keys(self) -> None:
        """SIGHUP: the key file again (rotations, revocations, new devices), for every partition."""
        self.reload.clear()
        try:
            devices = self.load_devices()
        except Exception as exc:  # a bad key file must not stop a running worker: keep the old one
            self.log("keys_reload_failed", error=str(exc))
            return
        self.devices = devices
        for partition in self.partitions.values():
            partition.ingest.verifier.update_devices(devices)
        self.log("keys_reloaded", devices=len(devices), revoked=sum(d.revoked for d in devices))

    def _adopt(self, partition, device) -> None:
        """A device first seen in this partition: after a re-partitioning its state (window,
        counters, status) is still under its old partition; take it, so nothing it sent before
        is accepted again."""
        elsewhere = partition.storage.device_elsewhere(device)
        partition.devices.add(device)
        if elsewhere is not None:
            state, status = elsewhere
            verifier = partition.ingest.verifier
            if verifier.restore_device(device, state):
                if status is not None:
                    verifier.restore_status(device, status)
                partition.ingest.touch(device)  # its row moves to this partition with the next commit
                self.log("device_adopted", device=device, partition=partition.index)

    def _tick_watches(self) -> None:
        # Liveness on the worker's clock for the devices of each partition it holds (a device
        # that sends nothing sends nothing to wake its partition); what the watch raised is stored.
        now = time.time()
        if now >= self._next_share:
            self._share_normals(now)
        for partition in list(self.partitions.values()):
            partition.ingest.tick(now)
            if partition.ingest.verifier.events:
                self._commit(partition)

    def _share_normals(self, now: float) -> None:
        # The fleet's percentiles over every worker's devices, through PostgreSQL: each partition's
        # watch then judges its devices against their whole link type, as one hub would.
        from hub.core.watch import FLEET_MIN

        window = self.settings.window_s
        self._next_share = now + min(window / 2, 60.0)
        watches = [partition.ingest.watch for partition in self.partitions.values()]
        if not watches:
            return
        self.fleet_normals.share([n for watch in watches for n in watch.learned_normals()], now)
        fleet = self.fleet_normals.percentiles(watches[0].fleet_wanted(), now - 2 * window, FLEET_MIN)
        for watch in watches:
            watch.fleet = fleet

    def _commit_due(self, force: bool = False) -> None:
        now = time.monotonic()
        for partition in list(self.partitions.values()):
            if partition.oldest is not None and (force or now - partition.oldest >= self.commit_interval):
                self._commit(partition)

    def _commit(self, partition) -> None:
        from hub.service.storage.postgres import Fenced

        try:
            partition.ingest.commit()
        except Fenced as exc:
            # Another worker holds the queue now: what this one verified since its last commit
            # will be delivered to that worker again. Start over from the broker.
            self.log("partition_fenced", partition=partition.index, reason=str(exc))
            self._drop(partition.index)
            raise OSError(f"partition {partition.index} fenced") from None
        if self._commits_left is not None:
            self._commits_left -= 1
            if self._commits_left <= 0:
                self.log("fault_injected", partition=partition.index, reason="exit after commit, before the ack")
                os._exit(70)
        if partition.last_tag is not None:
            partition.channel.basic_ack(partition.last_tag, multiple=True)
        partition.last_tag, partition.oldest = None, None
        self.commits += 1

    def _drop(self, index) -> None:
        partition = self.partitions.pop(index, None)
        if partition is not None:
            partition.storage.close()

    def _drop_all(self) -> None:
        for index in list(self.partitions):
            self._drop(index)
