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


def rss_bytes(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_bad_input_on_the_line_costs_nothing_but_counts(tmp_path, broker, keys):
    import random
    import time

    import serial
    from cobs import cobs

    from agent.sealer import sealer_for
    from firmware.device import serial_link
    from relay.intake import parse

    config = keys.provision("plc-7", "rs485")
    keys.provision("plc-8", "rs485")
    stranger = sealer_for({**config, "device_id": "plc-8"}, 1)  # plc-8's id, someone else's key
    honest = sealer_for(config, 1)
    with SerialBus(1) as line:
        hub = HubProcess(broker, keys.path, tmp_path / "hub.db", tmp_path / "hub.log").start()
        relay = RelayProcess(broker, line.relay_port, tmp_path / "relay", tmp_path / "relay.log")
        port = serial.Serial(line.device_ports[0], timeout=0.05)
        try:
            hub.wait_connected()
            relay.start()
            before = rss_bytes(relay.process.pid)
            rng = random.Random(5)
            port.write(bytes(rng.randrange(256) for _ in range(65536)))  # noise, zeros included
            noise = bytes(rng.randrange(1, 256) for _ in range(1 << 20))
            for _ in range(16):  # 16 MB without a single delimiter
                port.write(noise)
            # Then two frames sent as a device sends them, again until acknowledged (the noise may
            # still fill the line when they come): one under plc-8's id with someone else's key,
            # one honest. The relay cannot tell them apart (it holds no key) and carries both.
            acks = serial_link.Splitter(256)

            def send_until_acked(device, frame):
                for _ in range(30):
                    port.write(b"\x00" + serial_link.packet(serial_link.RECORD, device, frame))
                    deadline = time.monotonic() + 2
                    while time.monotonic() < deadline:
                        if any(parse(cobs.decode(p)) == (serial_link.ACK, device, frame[-4:])
                               for p in acks.feed(port.read(4096))):
                            return
                raise AssertionError(f"{device}'s frame never acknowledged")

            send_until_acked("plc-8", stranger.seal(b"open the valve"))
            frame = honest.seal(b"temp=21.5")
            send_until_acked("plc-7", frame)
            wait_for(lambda: entry(hub.db, "plc-8").get("forged", 0) >= 1, 30, "the stranger's frame judged")
            grown = rss_bytes(relay.process.pid) - before
            counts = relay.stop()
        finally:
            port.close()
            relay.kill()
            hub.stop()
    assert relay.process.returncode == 0  # it stopped when asked, never crashed
    assert counts["line_overrun"] >= 1 and counts.get("line_not_cobs", 0) + counts.get("line_header_damaged", 0) > 0
    assert grown < 8 * 1024 * 1024, f"the relay grew by {grown} bytes on 16 MB without a delimiter"
    assert stored(hub.db, "plc-7") == [(1, 0)]
    # The frame that claimed plc-8 was carried under the name it gave, and the hub judged it: a
    # forgery of plc-8 (someone on the line tampered), nothing stored, plc-7 untouched.
    assert entry(hub.db, "plc-8")["valid"] == 0 and entry(hub.db, "plc-7")["forged"] == 0
    assert entry(hub.db, "plc-7")["valid"] == 1


def test_the_linux_agent_on_a_serial_line(tmp_path, broker, keys):
    import subprocess

    write_private_json(tmp_path / "monitor-3.json", keys.provision("monitor-3", "rs485"))
    source = tmp_path / "vitals.log"
    source.write_text("".join(f"spo2=97 hr={60 + i}\n" for i in range(40)))
    faults = LineFaults(seed=4, ber=3e-4)
    with SerialBus(1, faults) as line:
        hub = HubProcess(broker, keys.path, tmp_path / "hub.db", tmp_path / "hub.log").start()
        relay = RelayProcess(broker, line.relay_port, tmp_path / "relay", tmp_path / "relay.log")
        try:
            hub.wait_connected()
            relay.start()
            agent = subprocess.run(
                [str(LINKSEAL), "agent", "run", "--config", str(tmp_path / "monitor-3.json"), "--serial",
                 line.device_ports[0], "--source", str(source), "--state-dir", str(tmp_path / "state"), "--max-rate", "0",
                 "--ack-timeout", "0.3", "--log-json"], capture_output=True, text=True, timeout=300)
            assert agent.returncode == 0, agent.stderr
            counts = relay.stop()
            wait_for(lambda: entry(hub.db, "monitor-3").get("corrupt") == counts["line_frames_damaged"], 30,
                     "the hub to count every damaged frame the relay published")
        finally:
            relay.kill()
            hub.stop()
    assert sorted(stored(hub.db, "monitor-3")) == [(1, seq) for seq in range(40)]
    device = stored_report(hub.db)["devices"]["monitor-3"]
    assert device["valid"] == 40 and device["forged"] == 0 and device["lost"] == 0
    assert line.truth.counts["damaged"] > 0 and device["status"]["last"] == "birth"
