"""`linkseal sim run --virtual-devices N`: the real firmware on virtual MicroPython boards in
place of the simulator's CPython agents.

Each board (simulator/virtual_device.py) runs the firmware built for it (firmware/device/app.py with
umqtt.simple) and publishes through a fault proxy for its link type (simulator/proxy.py),
which applies the link model and writes the fate of every PUBLISH to a trace; the proxies
forward to a broker (an embedded one unless --broker), which gives the boards their
PUBACKs. The traces are the ground truth: the run is then verified as `sim replay` does.
Status messages go through the proxies too; the comparison covers records.
"""

import asyncio
import shutil
import threading
import time
from pathlib import Path

from firmware.host.build import agent_settings, build
from hardware.board_registry import board
from hardware.link_registry import load_links
from hub.keys.keyfile import KeyFile, write_private_json
from hub.service.config import Broker

from .faults import model_for
from .micropython_lib import install as install_umqtt
from .proxy import FaultProxy
from .trace import read_trace, without_status
from .virtual_device import VirtualDevice

BOARD = "esp32"


class ProxyThread:
    """One fault proxy per link type, served by an event loop in a thread of its own."""

    def __init__(self, proxies: dict):
        self.proxies = proxies  # link -> FaultProxy
        self.ports = {}
        self.loop = asyncio.new_event_loop()
        self.stop_event = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._serve(),), daemon=True)

    async def _serve(self):
        self.stop_event = asyncio.Event()

        async def serve(link, proxy):
            await proxy.serve("127.0.0.1", 0, ready=lambda bound: self._bound(link, bound), stop=self.stop_event)

        await asyncio.gather(*(serve(link, proxy) for link, proxy in self.proxies.items()))

    def _bound(self, link, bound):
        self.ports[link] = bound[1]
        if len(self.ports) == len(self.proxies):
            self.ready.set()

    def start(self) -> "ProxyThread":
        self.thread.start()
        if not self.ready.wait(30):
            raise RuntimeError("the fault proxies did not start")
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(30)


def run_virtual_devices(scenario, out_dir: Path, broker_url, console):
    """Run the boards for the scenario's duration (wall-clock seconds); returns the key file
    and the record events of the proxies' traces, in time order."""
    out_dir = Path(out_dir)
    work = out_dir / "virtual-devices"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    registry = load_links()
    keyfile = KeyFile.create(work / "sim.keys")
    links = {}
    for n in range(scenario.devices):
        link = scenario.links[n % len(scenario.links)]
        links[f"vdev-{link}-{n // len(scenario.links) + 1}"] = link
    for device, link in links.items():
        keyfile.provision(device, link, save=False, form="full")  # MQTT through the fault proxies
    keyfile.save()

    upstream = None
    if broker_url is None:
        from .broker_run import EmbeddedBroker

        upstream = EmbeddedBroker().start()
        upstream_address = ("127.0.0.1", upstream.port)
    else:
        upstream_address = (broker_url.host, broker_url.port)
    traces = {link: work / f"proxy-{link}.trace.jsonl" for link in set(links.values())}
    proxies = ProxyThread({link: FaultProxy(model_for(registry[link], scenario.profiles.get(link)), upstream_address,
                                            scenario.seed + i, traces[link])
                           for i, link in enumerate(sorted(traces))}).start()
    boards = []
    try:
        for n, (device, link) in enumerate(links.items()):
            write_private_json(work / f"{device}.json", keyfile.device_config(device))
            via = Broker("127.0.0.1", proxies.ports[link], False, None, None, None, None, None)
            settings = agent_settings(via, board(BOARD), record_interval_ms=max(1, round(1000 / scenario.rate)),
                                      heartbeat_s=5)
            flash = work / "boards" / device
            build(work / f"{device}.json", board(BOARD), flash, settings)
            (flash / "manifest.py").unlink()
            install_umqtt(flash)
            boards.append(VirtualDevice(flash, unique_id=f"{n:08x}").start())
        with console.status(f"{len(boards)} virtual boards running for {scenario.duration:g} s..."):
            time.sleep(scenario.duration)  # the run's length, not synchronisation
    finally:
        for device in boards:
            device.stop()
        proxies.stop()
        if upstream is not None:
            upstream.stop()
    events = []
    for path in traces.values():
        events += read_trace(path)[1]
    records, statuses = without_status(sorted(events, key=lambda e: e.t))
    console.print(f"{len(records)} records and {statuses} status messages went through the proxies; the board "
                  f"consoles are in {work / 'boards'}.", highlight=False)
    return keyfile, records
