"""Brokers users already run, as the tests' own instances: RabbitMQ with its MQTT plugin and
NATS with its MQTT gateway (JetStream on), each on free loopback ports with its own
configuration and data directory, never the machine's system instances.

They answer to the same calls as tools.services.Mosquitto: start(), stop() (a clean
shutdown that keeps what is persistent), port and url.
"""

import os
import signal
import subprocess
from pathlib import Path

from tools.services import free_port, port_open, wait_for

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")  # the scripts themselves: /usr/sbin's wrappers switch user
NATS_SERVER = "/usr/sbin/nats-server"


def _require(path, package):
    if not Path(path).exists():
        raise AssertionError(f"{path} is missing: `make test` installs Debian's {package} package")


class RabbitMQ:
    """A single RabbitMQ node with rabbitmq_mqtt: own node name, AMQP, MQTT, distribution and
    epmd ports, Erlang cookie, HOME, mnesia, logs and enabled-plugins file."""

    def __init__(self, directory: Path, anonymous: bool = True, epmd_port: int | None = None,
                 cookie: str | None = None, plugins=("rabbitmq_mqtt", "rabbitmq_consistent_hash_exchange")):
        """anonymous: MQTT clients without a login are let in as guest (else they must log in).
        epmd_port, cookie: shared by the nodes of one cluster (RabbitMQCluster); plugins: enabled ones."""
        _require(RABBITMQ_BIN / "rabbitmq-server", "rabbitmq-server")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port, amqp, dist = free_port(), free_port(), free_port()
        epmd = epmd_port or free_port()
        self.epmd_port, self.owns_epmd = epmd, epmd_port is None
        self.amqp_port = amqp
        self.node = f"linkseal-test-{self.port}@localhost"
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{amqp}\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.port}\n"
            + ("mqtt.allow_anonymous = true\n"  # as guest, which RabbitMQ allows from loopback only
               "mqtt.default_user = guest\nmqtt.default_pass = guest\n" if anonymous else
               "mqtt.allow_anonymous = false\n") +
            "management.tcp.port = 0\nloopback_users = none\n")
        (self.dir / "enabled_plugins").write_text(f"[{','.join(plugins)}].\n")
        cookie_file = self.dir / ".erlang.cookie"
        if not cookie_file.exists():
            cookie_file.write_text(cookie or os.urandom(16).hex())
            cookie_file.chmod(0o400)
        self.env = {**os.environ, "HOME": str(self.dir), "RABBITMQ_NODENAME": self.node,
                    "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_NODE_PORT": str(amqp),
                    "RABBITMQ_DIST_PORT": str(dist), "ERL_EPMD_PORT": str(epmd),
                    "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
                    "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
                    "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"), "RABBITMQ_LOG_BASE": str(self.dir / "log"),
                    "RABBITMQ_PID_FILE": str(self.dir / "rabbitmq.pid"), "RABBITMQ_LOGS": str(self.dir / "rabbit.log")}
        self.process = None

    @property
    def url(self):
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def amqp_url(self):
        return f"amqp://127.0.0.1:{self.amqp_port}"

    def start(self):
        self.launch()
        return self.wait_listening()

    def launch(self):
        self.process = subprocess.Popen([str(RABBITMQ_BIN / "rabbitmq-server")], env=self.env, cwd=self.dir,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def wait_listening(self):
        wait_for(lambda: (port_open(self.port) and port_open(self.amqp_port)) or self.process.poll() is not None, 90,
                 "RabbitMQ's MQTT and AMQP listeners")
        assert self.process.poll() is None, self._log_tail()
        return self

    def ctl(self, *args) -> str:
        """rabbitmqctl against this node; raises with its output when it fails."""
        result = subprocess.run([str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node, *map(str, args)], env=self.env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def stop(self):
        """A clean shutdown: durable queues and persistent messages survive it."""
        if self.process and self.process.poll() is None:
            subprocess.run([str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node, "stop"], env=self.env,
                           capture_output=True, timeout=60)
            self.process.wait(60)
        self._kill_group()
        if self.owns_epmd:
            kill_epmd(self.epmd_port)

    def kill(self):
        self._kill_group()

    def _kill_group(self):
        # The node runs under a shell script, with epmd beside it: the whole session goes.
        if self.process:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(30)

    def _log_tail(self):
        log = self.dir / "rabbit.log"
        return log.read_text()[-3000:] if log.exists() else "(no log)"


class RabbitMQCluster:
    """RabbitMQ nodes of the tests' own, clustered: each with its own ports, data directory and
    node name, sharing one private epmd port and Erlang cookie (never the machine's)."""

    def __init__(self, directory: Path, size: int = 3):
        epmd, cookie = free_port(), os.urandom(16).hex()
        self.nodes = [RabbitMQ(Path(directory) / f"node{i}", epmd_port=epmd, cookie=cookie) for i in range(size)]

    @property
    def amqp_url(self):
        """Every node, for a client that fails over: amqp://HOST:PORT,HOST:PORT,..."""
        return "amqp://" + ",".join(f"127.0.0.1:{node.amqp_port}" for node in self.nodes)

    def start(self):
        for node in self.nodes:  # all at once: each takes several seconds to boot
            node.launch()
        for node in self.nodes:
            node.wait_listening()
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", first.node)
            node.ctl("start_app")
            node.wait_listening()
        wait_for(lambda: all(n.node in first.ctl("cluster_status", "--formatter", "json") for n in self.nodes), 60,
                 "every node to run in the cluster")
        return self

    def stop(self):
        for node in reversed(self.nodes):
            node.stop()
        kill_epmd(self.nodes[0].epmd_port)


def kill_epmd(port: int) -> None:
    """epmd daemonises out of the node's process group: find the one on our private port by
    its environment and stop it, so the tests leave no process behind."""
    marker = f"ERL_EPMD_PORT={port}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == "epmd" and marker in (entry / "environ").read_bytes().split(b"\0"):
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue  # gone meanwhile, or not ours to read


class Nats:
    """nats-server with JetStream and its MQTT gateway: own ports, store directory, server name."""

    def __init__(self, directory: Path):
        _require(NATS_SERVER, "nats-server")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port, client = free_port(), free_port()
        self.conf = self.dir / "nats.conf"
        self.conf.write_text(
            f'server_name: "linkseal-test-{self.port}"\n'
            f"listen: 127.0.0.1:{client}\n"
            f'jetstream {{ store_dir: "{self.dir / "jetstream"}" }}\n'
            f"mqtt {{ listen: 127.0.0.1:{self.port} }}\n")
        self.process = None

    @property
    def url(self):
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self):
        self.process = subprocess.Popen([NATS_SERVER, "-c", str(self.conf), "-l", str(self.dir / "nats.log")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: port_open(self.port) or self.process.poll() is not None, 30, "NATS's MQTT listener")
        assert self.process.poll() is None, (self.dir / "nats.log").read_text()[-3000:]
        return self

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # lame duck off: a clean shutdown
            self.process.wait(30)

    def kill(self):
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
