"""Devices on a serial line, through the keyless relay, into the hub.

What runs against what: the firmware (real MicroPython, WebAssembly) on a virtual board whose
UART is a pseudo-terminal, `linkseal relay serial` reading the other end with pyserial, a real
Mosquitto, `hub run` with SQLite. The line between them is simulator/serial_line.py: ptys
joined by a thread that injects the faults and counts their truth. The RS-485 transceiver is
the virtual board's: bytes written while the firmware has not raised the DE pin never reach
the line.
"""

import json
import re
import sqlite3
from contextlib import contextmanager

import pytest

from shared.device_config import write_private_json
from simulator.serial_line import LineFaults, SerialBus
from simulator.virtual_device import VirtualDevice
from tools.services import LINKSEAL, HubProcess, RelayProcess, stored_report, wait_for

SEALED = re.compile(r"linkseal: sealed (\d+) (\d+)")


def linkseal(*args):
    import subprocess

    result = subprocess.run([str(LINKSEAL), *map(str, args)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


# An integrator's record source (next to main.py, it takes the place of lib/records.mpy): a
# fixed number of records, so that "every record" is a known set once the device has sent them.
FINITE_SOURCE = """
_count = 0


def read():
    global _count
    if _count >= {records}:
        return None
    _count += 1
    return b"reading %d" % _count
"""


def serial_build(tmp_path, keys, device, *options, records=60):
    write_private_json(tmp_path / f"{device}.json", keys.provision(device, "rs485"))
    build = tmp_path / f"build-{device}"
    linkseal("firmware", "build", "--device", tmp_path / f"{device}.json", "--board", "esp32", "--heartbeat", 2,
             "--record-interval", 100, "--out", build, *options)
    settings = json.loads((build / "agent.json").read_text())
    assert settings["serial"]["de"] == 4 and "broker" not in settings
    settings.update(log_seals=True)
    settings["serial"]["ack_timeout_ms"] = 300
    write_private_json(build / "agent.json", settings)
    (build / "records.py").write_text(FINITE_SOURCE.format(records=records))
    return build


def sealed(board) -> set:
    return {(int(e), int(s)) for e, s in SEALED.findall(board.console())}


def stored(db, device) -> list:
    return sqlite3.connect(db).execute("SELECT epoch, seq FROM records WHERE device = ?", (device,)).fetchall()


def entry(db, device):
    try:
        return stored_report(db)["devices"].get(device) or {}
    except Exception:  # the hub is creating its schema right now
        return {}


@contextmanager
def rig(tmp_path, broker, keys, boards, faults=None, relay_options=()):
    """The line (a bus when several boards), `hub run`, the relay and the boards flashed with
    their builds and running: (line, hub, relay, [board]). Everything stops on the way out."""
    with SerialBus(len(boards), faults) as line:
        hub = HubProcess(broker, keys.path, tmp_path / "hub.db", tmp_path / "hub.log").start()
        relay = RelayProcess(broker, line.relay_port, tmp_path / "relay", tmp_path / "relay.log", *relay_options)
        devices = [VirtualDevice(tmp_path / f"board-{i}", unique_id=f"0badc0d{i}", uarts={2: port}, rs485={2: 4})
                   for i, port in enumerate(line.device_ports)]
        try:
            hub.wait_connected()
            relay.start()
            for board, build in zip(devices, boards):
                board.start()
                linkseal("firmware", "flash", "--port", board.port, "--build", build)
            yield line, hub, relay, devices
        finally:
            for board in devices:
                board.stop()
            relay.kill()
            hub.stop()


def test_firmware_over_a_noisy_line_every_record_once_damage_counted_corrupt(tmp_path, broker, keys):
    build = serial_build(tmp_path, keys, "plc-7")
    faults = LineFaults(seed=11, ber=2e-4, drop=2e-4, lost_delimiter=0.02)
    with rig(tmp_path, broker, keys, [build], faults) as (line, hub, relay, (board,)):
        board.wait_console("linkseal: connected, epoch 1", 60)
        wait_for(lambda: len(stored(hub.db, "plc-7")) >= 60, 240, "every record through the noisy line")
        board.stop()
        counts = relay.stop()
        # What the relay published last may still be on its way through the hub.
        wait_for(lambda: entry(hub.db, "plc-7").get("corrupt") == counts["line_frames_damaged"], 30,
                 f"the hub to count the {counts['line_frames_damaged']} damaged frames the relay published")
    truth = line.truth.counts
    rows = stored(hub.db, "plc-7")
    assert len(rows) == len(set(rows)) == 60, "a record lost or stored twice"
    assert set(rows) == sealed(board)
    device = stored_report(hub.db)["devices"]["plc-7"]
    assert device["link"] == "rs485" and device["valid"] == 60 and device["lost"] == 0
    assert device["forged"] == 0 and device["malformed"] == 0, device
    assert truth["damaged"] >= 5, truth  # the line did damage frames (seeded)
    # Exact counts against the injected truth: every piece the line delivered was either a
    # packet sent whole or damaged, and every damaged one is accounted for by the relay ...
    assert counts["line_pieces"] == truth["pieces"], (counts, truth)
    damaged = counts.get("line_not_cobs", 0) + counts.get("line_header_damaged", 0) + counts["line_frames_damaged"]
    assert damaged == truth["damaged"], (counts, truth)
    # ... and each damaged frame whose address survived reached the hub as corrupt on rs485.
    assert device["corrupt"] == counts["line_frames_damaged"] > 0, (device, counts)
    links = stored_report(hub.db)["links"]
    assert links["rs485"]["corrupt"] == device["corrupt"] and links["rs485"].get("forged", 0) == 0


def test_relay_kill_9_and_a_broker_restart_lose_nothing_and_accept_nothing_twice(tmp_path, broker, keys):
    build = serial_build(tmp_path, keys, "plc-7", records=80)
    with rig(tmp_path, broker, keys, [build]) as (line, hub, relay, (board,)):
        wait_for(lambda: len(stored(hub.db, "plc-7")) >= 15, 120, "records through the relay")
        relay.kill()  # mid-stream: whatever it held in its spool stays on disk
        seen = len(sealed(board))
        wait_for(lambda: len(sealed(board)) >= seen + 10, 60, "the device sealing on while the relay is down")
        again = RelayProcess(broker, line.relay_port, tmp_path / "relay", tmp_path / "relay-again.log").start()
        try:
            wait_for(lambda: len(stored(hub.db, "plc-7")) >= 40, 120, "records after the relay's restart")
            broker.stop()
            seen = len(sealed(board))
            wait_for(lambda: len(sealed(board)) >= seen + 10, 60, "the device sealing on while the broker is down")
            broker.start()
            wait_for(lambda: len(stored(hub.db, "plc-7")) >= 80, 180, "every record after the broker's restart")
        finally:
            counts = again.stop()
    rows = stored(hub.db, "plc-7")
    assert len(rows) == len(set(rows)) == 80 and set(rows) == sealed(board)
    device = stored_report(hub.db)["devices"]["plc-7"]
    assert device["valid"] == 80 and device["lost"] == 0 and device["forged"] == device["corrupt"] == 0, device
    assert counts["publish_failures"] >= 0 and counts.get("refused_full", 0) == 0


def test_a_polled_bus_of_three_boards(tmp_path, broker, keys):
    names = ["plc-1", "plc-2", "plc-3"]
    builds = [serial_build(tmp_path, keys, name, "--polled", records=25) for name in names]
    assert all(json.loads((b / "agent.json").read_text())["serial"]["polled"] for b in builds)
    # Virtual boards answer slowly (WebAssembly, three on two cores): a second to answer a poll.
    poll = ("--poll", ",".join(names), "--answer-timeout", 1)
    with rig(tmp_path, broker, keys, builds, relay_options=poll) as (line, hub, relay, boards):
        wait_for(lambda: all(len(stored(hub.db, name)) >= 25 for name in names), 300, "every board's records")
        counts = relay.stop()
    for name, board in zip(names, boards):
        rows = stored(hub.db, name)
        assert len(rows) == len(set(rows)) == 25 and set(rows) == sealed(board), name
    # Devices with nothing to send said so when polled; an answer that came after the relay had
    # moved on (a slow board) was not carried, and its frame came again at the next poll.
    assert counts["line_idle"] > 0 and counts["published"] >= 75, counts
    report = stored_report(hub.db)
    assert report["links"]["rs485"]["valid"] == 75 and report["links"]["rs485"].get("forged", 0) == 0
