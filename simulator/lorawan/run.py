"""`sim run --links lora --lorawan chirpstack|ttn`: LoRaWAN devices as they are, with ground truth.

Each device seals records in the compact form, queues them (a bounded queue, as the firmware's
RAM queue: the oldest go when it is full), and sends them through its own emulated RUI3 modem
(simulator/lorawan/modem.py: the region's duty cycle, the payload per data rate) the way the
firmware does (firmware/device/app.py, lorawan.py): a frame the current data rate cannot carry
is dropped unsent (too_large), a held frame waits, a sealed status message waits until it goes.
Every uplink is heard by each of the site's gateways with that gateway's own loss and SNR, and
the network server (network.py) turns what was heard into one ChirpStack or TTN event.
Half way through, a third of the devices fall back to the slowest data rate (ADR: SF12, 51
bytes, 2.8 s on air: the duty cycle then allows one uplink in 280 s, the queue overflows and the
longer records no longer fit); each device
loses power once (its RAM queue with it), boots into a new epoch and joins again (fCnt from 0).

The truth kept per device is what the hub can know: uplinks lost with a frame counter below
the newest one it received in their session, records never sent with a sequence number below
the newest record it received in their epoch, and frames heard per gateway.
"""

import random
from collections import deque
from dataclasses import dataclass, field

from agent.sealer import sealer_for
from shared.aes import ecb_block
from agent.compact_status import compact_status_payload
from agent.status import BIRTH, HEARTBEAT
from hardware.link_registry import load_links
from hub.core.network_servers import CHIRPSTACK, TTN

from .modem import Rui3Modem
from .network import Gateway, NetworkServer, Radio

SERVERS = (CHIRPSTACK, TTN)
GATEWAYS = (("gw-north", -96, 7.5), ("gw-mill", -109, -1.0), ("gw-ridge", -118, -9.0))


@dataclass
class LorawanScenario:
    devices: int = 6
    duration: float = 3 * 3600.0  # simulated seconds
    rate: float = 1 / 30  # records a second per device
    seed: int = 7
    server: str = CHIRPSTACK
    region: str = "EU868"
    heartbeat_s: float = 600.0
    queue: int = 16  # frames the device holds before dropping its oldest


@dataclass
class DeviceTruth:
    sent: list = field(default_factory=list)  # (epoch, session, fCnt, kind, seq, heard by)
    never_sent: list = field(default_factory=list)  # (epoch, seq, why): a full queue, too large, a power cut


class _Device:
    """One device as the firmware behaves on a LoRaWAN modem, in simulated time."""

    def __init__(self, config, dev_eui, scenario, rng, publish, data_rate):
        self.config, self.rng, self.scenario = config, rng, scenario
        self.truth = DeviceTruth()
        gateways = [Gateway(name, loss=min(0.95, rng.uniform(0.02, 0.3) + 0.25 * n), rssi=rssi + rng.gauss(0, 3),
                            snr=snr + rng.gauss(0, 1)) for n, (name, rssi, snr) in enumerate(GATEWAYS)]
        self.server = NetworkServer(scenario.server, dev_eui, Radio(gateways, rng.randrange(2**32)), publish,
                                    binary=rng.random() < 0.5, device_name=config["device_id"])
        self.modem = Rui3Modem(self._uplink, scenario.region, data_rate, join_s=6.0)
        self.epoch = 0
        self.now = 0.0
        self.source_drops = 0  # kept on flash by the firmware: across power cuts
        self.too_large = 0  # since the device started

    def _uplink(self, sent):
        self.last_sent = sent
        self.server.uplink(sent)
        heard = self.server.truth[-1][2]
        self.truth.sent.append((self.epoch, sent.dev_addr, sent.f_cnt, self.sending[0], self.sending[1], heard))

    def boot(self, t):
        """Power on: a new epoch, RAM (queue, unsent status) gone, the modem joins again."""
        for frame_seq in self.queue if self.epoch else ():
            self.truth.never_sent.append((self.epoch, frame_seq[1], "power cut"))
        self.epoch += 1
        self.sent, self.too_large = None, 0
        self.sealer = sealer_for(self.config, self.epoch, ecb_block)
        self.queue = deque()
        self.unsent_status = None
        self.modem.joined = False
        self.join_at = t  # the firmware asks the modem to join until it has
        self.next_record = t + self.rng.random() / self.scenario.rate
        self.next_heartbeat = t + self.scenario.heartbeat_s
        self.born = False
        self.next_send = t

    def _status(self, kind):
        payload = compact_status_payload(kind, self.sealer, len(self.queue), self.source_drops, self.sent, "power_on",
                                         too_large=self.too_large)
        return self.sealer.seal_status(payload), self.sealer.status_seq - 1

    def step(self, t):
        self.now = t
        self.modem.due(t)
        if t >= self.next_record:
            self.next_record += 1 / self.scenario.rate
            seq = self.sealer.seq
            note = b"x" * self.rng.choice((0, 0, 0, 4, 12, 24))  # now and then a longer record
            frame = self.sealer.seal(b'{"soil":%d,"t":%d,"n":"%s"}' % (self.rng.randrange(10**6), int(t), note))
            self.queue.append((frame, seq))
            if len(self.queue) > self.scenario.queue:
                self.truth.never_sent.append((self.epoch, self.queue.popleft()[1], "queue full"))
                self.source_drops += 1
        if not self.modem.joined:
            if t >= self.join_at:
                self.join_at = t + 10.0  # AT+JOIN answers busy while an uplink's windows are open
                self.modem.command("AT+JOIN=1:0:10:8", t)
            return
        if t < self.next_send:
            return
        if not self.born:
            self.unsent_status, self.born = self._status(BIRTH), True
        if t >= self.next_heartbeat:
            self.next_heartbeat += self.scenario.heartbeat_s
            if self.unsent_status is None:
                self.unsent_status = self._status(HEARTBEAT)
        while True:
            if self.unsent_status is not None:
                frame, seq = self.unsent_status
                if self._send(11, frame, ("status", seq)):
                    self.unsent_status = None
                    continue
                return
            if not self.queue:
                return
            frame, seq = self.queue[0]
            if len(frame) > self.modem.limits[self.modem.data_rate]:
                self.queue.popleft()
                self.truth.never_sent.append((self.epoch, seq, "too large"))
                self.source_drops += 1
                self.too_large += 1
                continue
            if not self._send(10, frame, ("record", seq)):
                return
            self.queue.popleft()
            self.sent = (self.epoch, seq)

    def _send(self, port, frame, what) -> bool:
        self.sending = what  # ("record" | "status", seq): _uplink, called by the modem inside command(), records it
        reply = self.modem.command("AT+SEND=%d:%s" % (port, frame.hex()), self.now)
        if reply != ["OK"]:
            self.next_send = self.now + 1.0  # held: the firmware tries again after held_retry_ms
            return False
        return True


def generate(scenario: LorawanScenario, keyfile) -> tuple[list, dict]:
    """(messages [(t, topic, payload)] the network server publishes, truth per device); the
    devices are provisioned in keyfile (compact, DevEUI, the region at its fastest data rate)."""
    if scenario.server not in SERVERS:
        raise ValueError(f"unknown network server {scenario.server!r}; known: {', '.join(SERVERS)}")
    rng = random.Random(scenario.seed)
    messages, devices = [], {}
    for n in range(scenario.devices):
        name = f"field-{n + 1:02d}"
        eui = "70b3d57ed0%06x" % (n + 1)
        fastest = len(load_links()["lora"].payloads(scenario.region)) - 1
        config = keyfile.provision(name, "lora", save=False, region=scenario.region, data_rate=f"DR{fastest}",
                                   dev_eui=eui)
        device = _Device(config, eui, scenario, random.Random(rng.random()), None, fastest)
        # The event leaves the network server when the uplink has ended and its de-duplication
        # window (200 ms by default in ChirpStack) has closed.
        device.server.publish = lambda topic, payload, device=device: messages.append(
            (round(device.last_sent.t + device.last_sent.airtime_s + 0.2, 6), topic, payload))
        devices[name] = device
    keyfile.save()
    power_cuts = {name: rng.uniform(0.2, 0.8) * scenario.duration for name in devices}
    slow_down = {name for n, name in enumerate(devices) if n % 3 == 1}
    for device in devices.values():
        device.boot(0.0)
    t = 0.0
    while t < scenario.duration:
        for name, device in devices.items():
            if power_cuts.get(name) is not None and t >= power_cuts[name]:
                del power_cuts[name]
                device.boot(t)
            if name in slow_down and t >= scenario.duration / 2:
                slow_down.discard(name)
                device.modem.data_rate = 0  # out of range of the near gateway: SF12, 51 bytes, 2.8 s on air
            device.step(t)
        t += 1.0
    messages.sort(key=lambda m: m[0])
    return messages, {name: knowable(device.truth) for name, device in devices.items()} | {
        "_servers": {name: device.server.truth for name, device in devices.items()}}


def knowable(truth: DeviceTruth) -> dict:
    """What the hub can know of one device's run (the module's docstring)."""
    received = [s for s in truth.sent if s[5]]
    top_f = {}
    for epoch, session, f_cnt, _, _, _ in received:
        top_f[session] = max(top_f.get(session, -1), f_cnt)
    top_seq = {}
    for epoch, _, _, kind, seq, _ in received:
        if kind == "record":
            top_seq[epoch] = max(top_seq.get(epoch, -1), seq)
    gateways = {}
    for *_, heard in received:
        for gateway in heard:
            gateways[gateway] = gateways.get(gateway, 0) + 1
    return {"uplinks": len(received),
            "lost_after_transmission": sum(1 for _, session, f_cnt, *_, heard in truth.sent
                                           if not heard and f_cnt < top_f.get(session, -1)),
            "lost_before_transmission": sum(1 for epoch, seq, _ in truth.never_sent if seq < top_seq.get(epoch, -1)),
            "never_sent": len(truth.never_sent), "gateways": gateways}


def verify(messages: list, keyfile, server: str, out_dir, broker_url=None, no_broker=False, console=None) -> dict:
    """The hub's stored report on the network server's messages: fed to the hub's ingest
    directly (no_broker), or published to a broker (broker_url, or an embedded one) that an
    in-process `hub run --lorawan` reads, each message at its time in the run."""
    import os
    import time
    from pathlib import Path

    from hardware.link_registry import links_by_code
    from hub.core.verifier import Verifier
    from hub.service.ingest import Ingest
    from hub.service.storage.sqlite import SQLiteStorage
    from hub.service.ways_in.lorawan_source import ingest_item

    from ..broker_run import stored_report

    out_dir = Path(out_dir)
    db = out_dir / "hub.db"
    for stale in (db, db.with_name("hub.db-wal"), db.with_name("hub.db-shm")):
        stale.unlink(missing_ok=True)
    verifier = Verifier(keyfile.device_keys(), {code: link.name for code, link in links_by_code().items()})
    handled = []  # one entry per message the hub handled, records and status messages alike
    ingest = Ingest(verifier, SQLiteStorage(db), on_verdict=handled.append)
    if no_broker:
        euis, status_port = keyfile.devices_by_eui(), load_links()["lora"].ports[1]
        for n, (t, _, payload) in enumerate(messages, start=1):
            topic, data, refused, radio = ingest_item(server, payload, euis, status_port)
            ingest.handle(topic, data, t, False, refused, radio)
            if n % 500 == 0:
                ingest.commit()
        ingest.commit()
    else:
        import threading

        import paho.mqtt.client as mqtt

        from hub.service.config import HubSettings, parse_broker
        from hub.service.ways_in.mqtt_adapter import HubService
        from shared.log import EventLog

        from ..broker_run import EmbeddedBroker, TraceClock

        embedded = EmbeddedBroker().start() if broker_url is None else None
        where = parse_broker(embedded.url if embedded else broker_url)
        clock = TraceClock([(t, topic, payload, None, None) for t, topic, payload in messages])
        settings = HubSettings(client_id=f"linkseal-sim-{os.getpid()}-{time.monotonic_ns()}")
        with open(out_dir / "hub.log", "w") as log_file:
            service = HubService(where, settings, ingest, EventLog(json_lines=True, stream=log_file), clock=clock.now,
                                 arrival_clock=clock, lorawan=[(server, where)], load_euis=keyfile.devices_by_eui)
            hub = threading.Thread(target=service.run, kwargs={"handle_signals": False}, name="hub")
            hub.start()
            publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"network-server-{os.getpid()}")
            try:
                if not all(source.subscribed.wait(30) for source in service.lorawan):
                    raise RuntimeError(f"the hub could not subscribe at {where.host}:{where.port} "
                                       f"(see {out_dir / 'hub.log'})")
                publisher.connect(where.host, where.port)
                publisher.loop_start()
                qos = 0 if server == TTN else 1  # as the network servers' MQTT integrations publish
                for info in [publisher.publish(topic, payload, qos=qos) for _, topic, payload in messages]:
                    info.wait_for_publish(60)
                deadline = time.monotonic() + 120
                while len(handled) < len(messages):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the hub handled {len(handled)} of {len(messages)} events")
                    time.sleep(0.05)  # polling the hub's count: the condition is the synchronisation
            finally:
                publisher.disconnect()
                publisher.loop_stop()
                service.stop()
                hub.join(60)
                if embedded:
                    embedded.stop()
    return stored_report(db)


FIGURES = ("uplinks", "lost_after_transmission", "lost_before_transmission")


def compare(truth: dict, hub: dict) -> dict:
    """Per device: each radio figure, true and measured; gateways' frames; whether all match."""
    devices, match = {}, True
    for name, known in sorted((n, t) for n, t in truth.items() if not n.startswith("_")):
        radio = (hub["devices"].get(name) or {}).get("radio") or {}
        row = {figure: {"truth": known[figure], "measured": radio.get(figure)} for figure in FIGURES}
        row["gateways"] = {gateway: {"truth": frames, "measured": radio.get("gateways", {}).get(gateway, {})
                                     .get("frames")} for gateway, frames in sorted(known["gateways"].items())}
        row["never_sent"] = known["never_sent"]
        row["match"] = all(v["truth"] == v["measured"] for v in [*(row[f] for f in FIGURES),
                                                                   *row["gateways"].values()])
        match &= row["match"]
        devices[name] = row
    return {"devices": devices, "radio_matches_truth": match}


def print_comparison(comparison: dict, console) -> None:
    from rich import box
    from rich.table import Table

    losses = Table(title="LoRaWAN: injected vs measured (truth / hub)", box=box.SIMPLE)
    gateways = Table(title="Frames heard per gateway (truth / hub)", box=box.SIMPLE)
    for column in ("device", "uplinks", "lost after sending", "never sent", "of which seen", ""):
        losses.add_column(column)
    for column in ("device", "gateway", "frames"):
        gateways.add_column(column)
    for name, row in comparison["devices"].items():
        pair = lambda f: f"{row[f]['truth']} / {row[f]['measured']}"  # noqa: E731
        losses.add_row(name, pair("uplinks"), pair("lost_after_transmission"), str(row["never_sent"]),
                       pair("lost_before_transmission"), "ok" if row["match"] else "MISMATCH")
        for gateway, frames in row["gateways"].items():
            gateways.add_row(name, gateway, f"{frames['truth']} / {frames['measured']}")
    console.print(losses)
    console.print(gateways)
