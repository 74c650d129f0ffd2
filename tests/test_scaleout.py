"""Hub workers on RabbitMQ with PostgreSQL: devices speak plain MQTT to RabbitMQ's MQTT plugin,
records are partitioned by device over quorum queues with a single active consumer, and two
workers share the state in PostgreSQL. Everything is real: a RabbitMQ node of the test's own
(own node name, ports, cookie, data directory), the machine's PostgreSQL in a database of the
test's own, `linkseal hub run` worker processes, paho devices."""

import json
import os
import signal
import subprocess
import threading
import time
import urllib.request

import pytest

from agent import Sealer, topic_for
from agent import frame as wire
from hub.keys.keyfile import write_private_json
from shared.capture import encode_line
from tools.brokers import RabbitMQ, RabbitMQCluster
from tools.services import LINKSEAL, publish, wait_for

PARTITIONS = 4


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory):
    node = RabbitMQ(tmp_path_factory.mktemp("rabbit")).start()
    yield node
    node.stop()


def fresh_topology(rabbit, partitions):
    """The module's node with only this test's queues: earlier tests' queues deleted, then declared."""
    import pika

    admin = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", rabbit.amqp_port))
    try:
        channel = admin.channel()
        for name in [f"linkseal.partition.{i}" for i in range(8)] + ["linkseal.status"]:
            channel.queue_delete(name)
    finally:
        admin.close()
    declared = linkseal("hub", "topology", "--broker", rabbit.amqp_url, "--partitions", partitions)
    assert declared.returncode == 0, declared.stderr
    return declared


def drained(node) -> bool:
    """Every linkseal queue empty: nothing ready, nothing delivered and unacknowledged (a record
    count alone can be reached while redelivered copies still wait)."""
    rows = json.loads(node.ctl("list_queues", "name", "messages", "--formatter", "json"))
    return all(row["messages"] == 0 for row in rows if row["name"].startswith("linkseal."))


def linkseal(*args, env=None):
    return subprocess.run([str(LINKSEAL), *map(str, args)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


class Workers:
    """`linkseal hub run --broker amqp://... --db postgresql://...` processes."""

    def __init__(self, tmp_path, rabbit, keys, db_url):
        self.tmp_path, self.rabbit, self.keys, self.db_url = tmp_path, rabbit, keys, db_url
        self.processes = []

    def start(self, name, *extra, env=None):
        log = open(self.tmp_path / f"{name}.log", "a")
        process = subprocess.Popen([str(LINKSEAL), "hub", "run", "--broker", self.rabbit.amqp_url, "--keys", self.keys,
                                    "--db", self.db_url, "--log-json", "--insecure-plaintext", *extra],
                                   stdout=log, stderr=log, env={**os.environ, **(env or {})})
        self.processes.append(process)
        wait_for(lambda: '"event": "connected"' in (self.tmp_path / f"{name}.log").read_text()
                 or process.poll() is not None, 30, f"worker {name} to connect")
        assert process.poll() is None, (self.tmp_path / f"{name}.log").read_text()
        return process

    def events(self, name):
        return [json.loads(line) for line in (self.tmp_path / f"{name}.log").read_text().splitlines()
                if line.startswith("{")]

    def stop(self):
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(30)


def test_topology_is_idempotent_and_refuses_another_partition_count(rabbit):
    first = fresh_topology(rabbit, PARTITIONS)
    again = linkseal("hub", "topology", "--broker", rabbit.amqp_url, "--partitions", PARTITIONS)
    assert again.returncode == 0 and again.stdout == first.stdout
    other = linkseal("hub", "topology", "--broker", rabbit.amqp_url, "--partitions", PARTITIONS + 2)
    assert other.returncode == 2 and "already has 4 partitions" in other.stderr and "Traceback" not in other.stderr


def _traffic(keys, devices, frames_per_device):
    """Sealed records of each device, interleaved, plus a forgery and a frame sent twice."""
    sealers = {}
    for i in range(devices):
        device = f"bed-{i:02d}"
        config = keys.provision(device, "wifi")
        sealers[device] = Sealer(device, bytes.fromhex(config["key"]))
    messages = []
    for _ in range(frames_per_device):
        for device, sealer in sealers.items():
            messages.append((topic_for(device), sealer.seal(b"reading")))
    forged = bytearray(messages[5][1])
    forged[-5] ^= 0x01  # inside the tag, CRC recomputed below: an intact frame with a wrong MAC
    forged = bytes(forged[:-4]) + wire.crc_trailer(bytes(forged[:-4]))
    messages.append((messages[5][0], forged))
    messages.append(messages[7])  # an accepted frame again
    return messages


def test_two_workers_share_the_fleet_survive_a_kill_and_a_crash_after_commit_and_report_like_one_hub(
        tmp_path, rabbit, keys, postgres):
    fresh_topology(rabbit, PARTITIONS)
    messages = _traffic(keys, devices=24, frames_per_device=60)
    workers = Workers(tmp_path, rabbit, keys.path, postgres.url)
    try:
        # Worker a crashes after its third commit, before acknowledging it: its partitions move
        # to b, which gets that batch again (redelivered) and must not accept anything twice.
        a = workers.start("a", env={"LINKSEAL_FAULT_EXIT_AFTER_COMMITS": "3"})
        b = workers.start("b")
        publish(rabbit.port, messages[: len(messages) // 2])
        wait_for(lambda: a.poll() is not None, 60, "worker a to crash after a commit")
        c = workers.start("c")
        publish(rabbit.port, messages[len(messages) // 2 : 3 * len(messages) // 4])
        b.send_signal(signal.SIGKILL)  # kill -9 of an active worker mid-stream
        b.wait(10)
        publish(rabbit.port, messages[3 * len(messages) // 4 :])
        valid = 24 * 60
        wait_for(lambda: postgres.query("SELECT COUNT(*) FROM linkseal_records")[0][0] >= valid, 90,
                 "every record in PostgreSQL")
        wait_for(lambda: _report(postgres.url)["links"].get("wifi", {}).get("forged") == 1, 60, "the forgery counted")
        wait_for(lambda: drained(rabbit), 60, "the queues to drain")
    finally:
        workers.stop()
    assert c.returncode == 0
    rows = postgres.query("SELECT device, epoch, seq FROM linkseal_records ORDER BY device, epoch, seq")
    assert len(rows) == len(set(rows)) == valid  # each record exactly once
    for i in range(24):
        assert [seq for device, _, seq in rows if device == f"bed-{i:02d}"] == list(range(60))
    # Each device's records were accepted in order, across the crash and the kill.
    for i in range(24):
        accepted = [seq for (seq,) in postgres.query("SELECT seq FROM linkseal_records WHERE device = %s "
                                                     "ORDER BY verified_at, seq", (f"bed-{i:02d}",))]
        assert accepted == sorted(accepted), f"bed-{i:02d}"
    # The same frames through offline `hub verify`: the counters agree.
    capture = tmp_path / "capture.jsonl"
    capture.write_text("".join(encode_line(time.time(), topic, payload) + "\n" for topic, payload in messages))
    offline = json.loads(linkseal("hub", "verify", capture, "--keys", keys.path, "--json",
                                  "--insecure-plaintext").stdout)
    fleet = _report(postgres.url)
    counters = ("received", "valid", "lost", "duplicate", "reordered", "forged", "replay", "corrupt")
    assert {k: fleet["links"]["wifi"][k] for k in counters} == {k: offline["links"]["wifi"][k] for k in counters}
    for device, entry in offline["devices"].items():
        assert {k: fleet["devices"][device][k] for k in counters} == {k: entry[k] for k in counters}, device
    assert fleet["links"]["wifi"]["redelivered"] >= 1  # the crash-after-commit path ran
    # The resent frame is a duplicate (no security event); the forgery is one, on one partition's chain.
    assert fleet["links"]["wifi"]["duplicate"] == 1
    assert [e["kind"] for e in fleet["events"]] == [e["kind"] for e in offline["events"]] == ["forged"]
    taken = [e for name in ("a", "b", "c") for e in workers.events(name) if e["event"] == "partition_taken"]
    assert {e["partition"] for e in taken} == set(range(PARTITIONS))
    audit = linkseal("hub", "audit", "--db", postgres.url)
    assert audit.returncode == 0 and "hash chain intact" in audit.stdout and "counts" in audit.stdout, audit.stdout
    # Someone hides the forgery from the counters, and edits a device's state behind the hub's back.
    postgres.execute("UPDATE linkseal_counts SET value = value - 1 WHERE scope = 'link' AND counter = 'forged'")
    postgres.execute("DELETE FROM linkseal_records WHERE device = 'bed-03' AND seq = 7")
    postgres.execute("UPDATE linkseal_events SET reason = 'nothing happened'")
    audit = linkseal("hub", "audit", "--db", postgres.url)
    assert audit.returncode == 1, audit.stdout
    assert "link wifi: forged differ" in audit.stdout and "device bed-03: 59 stored records for 60" in audit.stdout
    assert "contents were changed" in audit.stdout


def _report(url):
    result = linkseal("hub", "report", "--db", url, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_second_worker_gets_its_share_of_the_partitions_and_says_so_in_its_metrics(tmp_path, rabbit, keys, postgres):
    """Single active consumer makes the first worker active on every queue; the first hands
    partitions back until each holds ceil(4 / 2) = 2."""
    fresh_topology(rabbit, PARTITIONS)
    messages = _traffic(keys, devices=24, frames_per_device=40)[: 24 * 40]
    workers = Workers(tmp_path, rabbit, keys.path, postgres.url)
    taken = lambda name: {e["partition"] for e in workers.events(name) if e["event"] == "partition_taken"}  # noqa: E731
    try:
        workers.start("a")
        publish(rabbit.port, messages[: 24 * 10])
        wait_for(lambda: len(taken("a")) == PARTITIONS, 30, "worker a to hold every partition")
        workers.start("b", "--metrics", "127.0.0.1:0")
        wait_for(lambda: sum(e["event"] == "partition_released" for e in workers.events("a")) >= 2, 30,
                 "worker a to hand two partitions back")
        publish(rabbit.port, messages[24 * 10 :])  # b learns it leads a queue from its first delivery
        wait_for(lambda: len(taken("b")) >= 2, 30, "worker b to take its share")
        wait_for(lambda: postgres.query("SELECT COUNT(*) FROM linkseal_records")[0][0] >= len(messages), 60,
                 "every record in PostgreSQL")
        address = next(e["address"] for e in workers.events("b") if e["event"] == "metrics")
        metrics = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
    finally:
        workers.stop()
    released = [e for e in workers.events("a") if e["event"] == "partition_released"]
    assert len(released) >= 2 and all(e["share"] == 2 and e["live_workers"] == 2 for e in released)
    owned = {line.split('"')[1] for line in metrics.splitlines()
             if line.startswith("linkseal_partition_owned{") and line.endswith(" 1.0")}
    assert len(owned) >= 2 and "linkseal_worker_commits_total" in metrics
    rows = postgres.query("SELECT device, epoch, seq FROM linkseal_records")
    assert len(rows) == len(set(rows)) == len(messages)


def _mqtt_publish(port, username, password, topic, payload, client_id=None) -> str:
    """'acknowledged', 'refused' (no CONNACK success) or 'disconnected' (the broker closed the
    connection instead of acknowledging), each decided by the broker's own answer."""
    import paho.mqtt.client as mqtt

    outcome, done = [], threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or username)
    client.username_pw_set(username, password)

    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            outcome.append("refused")
            done.set()
        else:
            client.publish(topic, payload, qos=1)

    def on_publish(client, userdata, mid, reason_code, properties):
        outcome.append("acknowledged")
        done.set()

    def on_disconnect(client, userdata, flags, reason_code, properties):
        outcome.append("disconnected")
        done.set()

    client.on_connect, client.on_publish, client.on_disconnect = on_connect, on_publish, on_disconnect
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert done.wait(30), "the broker answered nothing"
    finally:
        client.loop_stop()
        client.disconnect()
    return outcome[0]


def test_broker_accounts_let_devices_write_only_their_own_topics_and_workers_only_consume(tmp_path, keys):
    import pika

    first = Sealer("bed-01", bytes.fromhex(keys.provision("bed-01", "wifi")["key"]))
    keys.provision("bed-02", "wifi")
    keys.provision("bed-03", "wifi")
    keys.revoke("bed-03")
    out = linkseal("hub", "broker-config", "--rabbitmq", "--keys", keys.path, "--out", tmp_path / "conf",
                   "--insecure-plaintext")
    assert out.returncode == 0, out.stderr
    definitions = json.loads((tmp_path / "conf" / "definitions.json").read_text())
    assert {u["name"] for u in definitions["users"]} == {"linkseal-hub", "bed-01", "bed-02"}  # none for revoked
    node = RabbitMQ(tmp_path / "strict", anonymous=False).start()
    try:
        node.ctl("import_definitions", tmp_path / "conf" / "definitions.json")
        as_worker = linkseal("hub", "topology", "--broker", node.amqp_url, "--partitions", 2, "--username",
                             "linkseal-hub", "--password-file", tmp_path / "conf" / "hub.password")
        assert as_worker.returncode == 2 and "needs an administrator's account" in as_worker.stderr, as_worker.stderr
        assert "Traceback" not in as_worker.stderr
        assert linkseal("hub", "topology", "--broker", node.amqp_url, "--partitions", 2).returncode == 0  # as admin
        password = keys.mqtt_password
        assert _mqtt_publish(node.port, "bed-01", password("bed-01"), topic_for("bed-01"), first.seal(b"r")) == \
            "acknowledged"
        assert _mqtt_publish(node.port, "bed-01", password("bed-01"), topic_for("bed-02"), first.seal(b"r")) == \
            "disconnected"  # topic authorisation: not its own routing key
        for other_id in ("bed-02", "linkseal-hub", "bed-01x"):  # its own topic, but not its own client id
            assert _mqtt_publish(node.port, "bed-01", password("bed-01"), topic_for("bed-01"), first.seal(b"r"),
                                 client_id=other_id) == "disconnected"
        assert _mqtt_publish(node.port, "bed-01", "not-the-password", topic_for("bed-01"), b"x") == "refused"
        assert _mqtt_publish(node.port, "bed-03", password("bed-03"), topic_for("bed-03"), b"x") == "refused"
        hub_password = (tmp_path / "conf" / "hub.password").read_text().strip()
        worker = pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", node.amqp_port, credentials=pika.PlainCredentials("linkseal-hub", hub_password)))
        try:
            channel = worker.channel()
            queued = sum(channel.queue_declare(f"linkseal.partition.{i}", passive=True).method.message_count
                         for i in range(2))
            assert queued == 1  # bed-01's own record, and only that
            channel.basic_publish("amq.topic", "linkseal.v1.bed-02.rec", b"forged by a worker")
            with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="ACCESS_REFUSED"):
                channel.queue_declare("linkseal.partition.0", passive=True)  # the broker closed it for the publish
        finally:
            worker.close()
    finally:
        node.stop()


def publish_with_failover(ports, messages, start=0):
    """QoS 1 through whichever node answers, as a device would: every message the broker did not
    acknowledge is sent again through the next node. Returns the nodes used."""
    import paho.mqtt.client as mqtt

    pending, node, used = dict(enumerate(messages)), start, []
    while pending:
        port = ports[node % len(ports)]
        node += 1
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"dev-{time.monotonic_ns()}")
        client.max_inflight_messages_set(100)
        connected, gone, acked = threading.Event(), threading.Event(), set()
        client.on_connect = lambda *args: connected.set()
        client.on_disconnect = lambda *args: gone.set()
        client.on_publish = lambda client, userdata, mid, *rest: acked.add(mid)
        try:
            client.connect("127.0.0.1", port)
        except OSError:
            continue  # that node is down
        client.loop_start()
        try:
            wait_for(lambda: connected.is_set() or gone.is_set(), 30, "a CONNACK")
            mids = {client.publish(topic, payload, qos=1).mid: i for i, (topic, payload) in sorted(pending.items())}
            wait_for(lambda: gone.is_set() or len(acked) >= len(mids), 60, "acknowledgements or a lost connection")
            for mid in acked & set(mids):
                del pending[mids[mid]]
        finally:
            client.disconnect()
            client.loop_stop()
        used.append(port)
    return used


def test_a_three_node_cluster_loses_a_leader_node_and_a_worker_and_keeps_every_acknowledged_record_once(
        tmp_path, keys, postgres):
    cluster = RabbitMQCluster(tmp_path / "cluster").start()
    workers = Workers(tmp_path, cluster, keys.path, postgres.url)
    try:
        assert linkseal("hub", "topology", "--broker", cluster.amqp_url, "--partitions", PARTITIONS).returncode == 0
        leaders = cluster.nodes[0].ctl("list_queues", "name", "leader", "members", "--formatter", "json")
        queues = {q["name"]: q for q in json.loads(leaders)}
        assert all(len(queues[f"linkseal.partition.{i}"]["members"]) == 3 for i in range(PARTITIONS))
        victim = next(n for n in cluster.nodes if n.node == queues["linkseal.partition.0"]["leader"])
        survivor = next(n for n in cluster.nodes if n is not victim)
        ports = [n.port for n in cluster.nodes]
        messages = _traffic(keys, devices=16, frames_per_device=60)[: 16 * 60]
        config = tmp_path / "gateway.json"  # a Linux agent's, provisioned before the workers read the key file
        write_private_json(config, keys.provision("gateway-1", "rs485"))
        workers.start("a", env={"LINKSEAL_FAULT_EXIT_AFTER_COMMITS": "4"})  # exits after a commit, before its ack
        workers.start("b")
        publish_with_failover(ports, messages[:320])
        victim.kill()  # kill -9 of the node leading partition 0 (and its MQTT clients' connections)
        publish_with_failover(ports, messages[320:640], start=ports.index(survivor.port))
        victim.start()  # it comes back and rejoins
        owner = postgres.query("SELECT owner FROM linkseal_partitions WHERE partition = 0")[0][0]
        os.kill(int(owner.rsplit(":", 1)[1]), signal.SIGKILL)  # kill -9 of partition 0's active worker
        # A Linux agent through the MQTT plugin too: its status messages take the re-route.
        source = tmp_path / "readings.log"
        source.write_text("".join(f"reading {i}\n" for i in range(200)))
        agent = subprocess.run([str(LINKSEAL), "agent", "run", "--config", config, "--broker", survivor.url,
                                "--username", "guest", "--source", source, "--state-dir", tmp_path / "agent",
                                "--heartbeat", "0.2"], capture_output=True, text=True, timeout=120,
                               env={**os.environ, "LINKSEAL_MQTT_PASSWORD": "guest"})  # this node's only account
        assert agent.returncode == 0, agent.stderr
        publish_with_failover(ports, messages[640:])
        workers.start("c")
        total = len(messages) + 200
        wait_for(lambda: postgres.query("SELECT COUNT(*) FROM linkseal_records")[0][0] >= total, 120,
                 "every acknowledged record in PostgreSQL")
        wait_for(lambda: (_report(postgres.url)["devices"].get("gateway-1") or {}).get("status"), 60,
                 "the agent's status, re-routed into its partition")
        wait_for(lambda: drained(survivor), 60, "the queues to drain, redelivered copies included")
    finally:
        workers.stop()
        cluster.stop()
    rows = postgres.query("SELECT device, epoch, seq FROM linkseal_records")
    assert len(rows) == len(set(rows)) == total  # every acknowledged record, exactly once
    report = _report(postgres.url)
    for i in range(16):
        device = report["devices"][f"bed-{i:02d}"]
        assert (device["valid"], device["lost"]) == (60, 0), device
    gateway = report["devices"]["gateway-1"]
    assert (gateway["valid"], gateway["lost"], gateway["status"]["epoch"]) == (200, 0, 1), gateway
    assert any(e["event"] == "fault_injected" for e in workers.events("a"))
    # The batch committed before the crash came again: on wifi or, when the crash fell on a batch
    # of the agent's records, on rs485 (which commit is the fourth depends on timing).
    assert sum(link["redelivered"] for link in report["links"].values()) >= 1
    assert sorted(seq for device, _, seq in rows if device == "gateway-1") == list(range(200))


def test_a_worker_reloads_the_key_file_on_sighup(tmp_path, rabbit, keys, postgres):
    fresh_topology(rabbit, PARTITIONS)
    workers = Workers(tmp_path, rabbit, keys.path, postgres.url)
    worker = workers.start("w")
    try:
        late = Sealer("late-01", bytes.fromhex(keys.provision("late-01", "lora", form="full")["key"]))  # after the worker started
        worker.send_signal(signal.SIGHUP)
        wait_for(lambda: any(e["event"] == "keys_reloaded" for e in workers.events("w")), 30, "the reload")
        publish(rabbit.port, [(topic_for("late-01"), late.seal(b"r")) for _ in range(3)])
        wait_for(lambda: (_report(postgres.url)["devices"].get("late-01") or {}).get("valid") == 3, 30,
                 "the new device's records")
    finally:
        workers.stop()
    assert _report(postgres.url)["unknown_device"] == 0


def test_a_postgresql_outage_pauses_the_workers_and_loses_nothing(tmp_path, rabbit, keys, postgres):
    fresh_topology(rabbit, PARTITIONS)
    messages = _traffic(keys, devices=12, frames_per_device=40)[: 12 * 40]
    workers = Workers(tmp_path, rabbit, keys.path, postgres.url)
    worker = workers.start("w")
    try:
        publish(rabbit.port, messages[:200])
        wait_for(lambda: postgres.query("SELECT COUNT(*) FROM linkseal_records")[0][0] >= 200, 30, "the first part")
        postgres.refuse_connections(True)  # the database goes away, open connections cut
        publish(rabbit.port, messages[200:])  # RabbitMQ keeps these while the worker cannot commit
        wait_for(lambda: any(e["event"] == "storage_unavailable" for e in workers.events("w")), 30,
                 "the worker to notice")
        postgres.refuse_connections(False)
        wait_for(lambda: postgres.query("SELECT COUNT(*) FROM linkseal_records")[0][0] >= len(messages), 60,
                 "the rest, after the outage")
    finally:
        workers.stop()
    assert worker.returncode == 0
    rows = postgres.query("SELECT device, epoch, seq FROM linkseal_records")
    assert len(rows) == len(set(rows)) == len(messages)
    report = _report(postgres.url)
    assert (report["links"]["wifi"]["valid"], report["links"]["wifi"]["lost"]) == (len(messages), 0)


def test_repartitioning_after_a_drain_keeps_each_device_state(tmp_path, rabbit, keys, postgres):
    """2 partitions, then 3: every device's window follows it, so a frame accepted before the
    change is not accepted again after it, and loss accounting carries on."""
    import pika

    fresh_topology(rabbit, 2)
    admin = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", rabbit.amqp_port))
    channel = admin.channel()
    messages = _traffic(keys, devices=12, frames_per_device=30)[: 12 * 30]
    workers = Workers(tmp_path, rabbit, keys.path, postgres.url)
    worker = workers.start("before")
    publish(rabbit.port, messages[: 12 * 20])
    wait_for(lambda: postgres.query("SELECT COUNT(*) FROM linkseal_records")[0][0] >= 12 * 20, 60, "the first part")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    for index in range(2):
        assert channel.queue_declare(f"linkseal.partition.{index}", passive=True).method.message_count == 0
        channel.queue_delete(f"linkseal.partition.{index}")
    admin.close()
    assert linkseal("hub", "topology", "--broker", rabbit.amqp_url, "--partitions", 3).returncode == 0
    workers.start("after")
    try:
        # Frames 0-9 of every device again (a replay), then the rest with 20-24 missing.
        publish(rabbit.port, messages[: 12 * 10] + messages[12 * 25 :])
        wait_for(lambda: _report(postgres.url)["links"].get("wifi", {}).get("received", 0) >= 12 * 35, 60,
                 "the second part")
    finally:
        workers.stop()
    adopted = {e["device"] for e in workers.events("after") if e["event"] == "device_adopted"}
    moved = {device for (device,) in postgres.query("SELECT device FROM linkseal_devices WHERE partition = 2")}
    assert moved and moved <= adopted  # devices now in the new partition took their state along
    report = _report(postgres.url)
    for i in range(12):
        device = report["devices"][f"bed-{i:02d}"]
        assert (device["valid"], device["duplicate"], device["lost"]) == (25, 10, 5), device
    rows = postgres.query("SELECT device, epoch, seq FROM linkseal_records")
    assert len(rows) == len(set(rows)) == 12 * 25


def test_topology_names_the_missing_plugin(tmp_path):
    node = RabbitMQ(tmp_path / "bare", plugins=("rabbitmq_mqtt",)).start()
    try:
        out = linkseal("hub", "topology", "--broker", node.amqp_url, "--partitions", 2)
    finally:
        node.stop()
    assert out.returncode == 2 and "rabbitmq-plugins enable rabbitmq_consistent_hash_exchange" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_a_worker_role_that_cannot_set_up_the_tables_is_an_input_error(postgres):
    """Tables created by another role: the worker's says so in one line (exit 2), no traceback."""
    import psycopg

    from hub.service.storage.postgres import ensure_schema
    from hub.service.storage.sqlite import StorageError

    ensure_schema(postgres.url)  # as the administrator
    role = f"linkseal_stranger_{os.getpid()}"
    postgres.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        with pytest.raises(StorageError, match="the workers' role must own linkseal_"):
            ensure_schema(postgres.url.replace("postgres@", f"{role}@"))
    finally:
        with psycopg.connect(postgres.url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
            admin.execute(f'DROP ROLE "{role}"')


def test_a_workers_restart_backlog_sent_within_the_rate_drains_whole(tmp_path, rabbit, keys, postgres):
    """As for the single hub (test_hub_service): a device at 49 frames/s (limit 100/s, burst 10)
    keeps sending while no worker runs; RabbitMQ keeps the backlog, and the worker that takes the
    partitions afterwards accepts every record of it."""
    from tools.services import publish_paced

    fresh_topology(rabbit, PARTITIONS)
    config = tmp_path / "hub.toml"
    config.write_text("[rate_limits]\ndefault = { rate = 100, burst = 10 }\n")
    sealer = Sealer("pump-9", bytes.fromhex(keys.provision("pump-9", "wifi")["key"]), link="wifi", epoch=1)
    stream = [(topic_for("pump-9"), sealer.seal(b"%d" % i)) for i in range(310)]
    stored = lambda: postgres.query("SELECT COUNT(*) FROM linkseal_records")[0][0]  # noqa: E731
    workers = Workers(tmp_path, rabbit, keys.path, postgres.url)
    try:
        workers.start("a", "--config", config)
        publish_paced(rabbit.port, stream[:10], 49)
        wait_for(lambda: stored() == 10, 60, "the first records")
        workers.stop()
        publish_paced(rabbit.port, stream[10:], 49)  # about 6 s with no worker: RabbitMQ keeps them
        workers.start("b", "--config", config)
        wait_for(lambda: stored() == len(stream), 60, "the backlog")
        wait_for(lambda: drained(rabbit), 60, "the queues to drain")
    finally:
        workers.stop()
    device = _report(postgres.url)["devices"]["pump-9"]
    assert (device["valid"], device["rate_limited"], device["lost"]) == (len(stream), 0, 0), device


def test_a_worker_notices_a_silent_device_in_its_partitions(tmp_path, rabbit, keys, postgres):
    """The watch runs per partition on the worker's clock: a device that announced 1 s heartbeats
    and then sent nothing is silent 3 s later, in PostgreSQL's report and in the worker's metrics."""
    from agent.sealer import status_topic_for
    from agent.status import BIRTH, status_payload

    fresh_topology(rabbit, PARTITIONS)
    quiet = Sealer("bed-00", bytes.fromhex(keys.provision("bed-00", "wifi")["key"]))
    workers = Workers(tmp_path, rabbit, keys.path, postgres.url)
    try:
        workers.start("a", "--metrics", "127.0.0.1:0")
        publish(rabbit.port, [(status_topic_for("bed-00"), quiet.seal_status(
            status_payload(BIRTH, quiet, 0, 0, every=(1, None))))])
        wait_for(lambda: _report(postgres.url)["devices"].get("bed-00", {}).get("liveness") == "silent", 60,
                 "bed-00 silent")
        address = next(e["address"] for e in workers.events("a") if e["event"] == "metrics")
        metrics = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
    finally:
        workers.stop()
    assert 'linkseal_silent_devices{link="wifi"} 1.0' in metrics
    report = _report(postgres.url)
    silent = [e for e in report["events"] if e["kind"] == "silent"]
    assert [e["device"] for e in silent] == ["bed-00"] and "heartbeat periods of 1 s" in silent[0]["reason"]
