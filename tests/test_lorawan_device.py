"""The real firmware with its `lorawan` transport on a virtual board, through the RUI3 modem
emulator (a pseudo-terminal as the board's UART2), the air (gateways with their own loss) and
a network server publishing ChirpStack v4 events to a real Mosquitto, into `hub run --lorawan`.

What runs against what: MicroPython (WebAssembly), the firmware build, mpremote, Mosquitto, the
hub and SQLite are real. The modem, the air and the network server are emulated
(simulator/lorawan/): no LoRa radio can run here. Modem time is shrunk (time_scale) so a test
runs in seconds, and the emulator's own counts say what it refused.
"""

import json
import re
import signal
import sqlite3
from contextlib import contextmanager

import pytest

from hub.core.network_servers import CHIRPSTACK
from shared.device_config import write_private_json
from simulator.lorawan.modem_line import ModemLine
from simulator.lorawan.network import Gateway, NetworkServer, Radio
from simulator.virtual_device import VirtualDevice
from tools.services import LINKSEAL, HubProcess, stored_report, wait_for

EUI = "70b3d57ed0000a01"
SEALED = re.compile(r"linkseal: sealed (\d+) (\d+)")


def linkseal(*args):
    import subprocess

    result = subprocess.run([str(LINKSEAL), *map(str, args)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def lora_build(tmp_path, keys):
    """A compact LoRa device (EU868, DR0: 51-byte uplinks) built for the ESP32 + RAK3172 board."""
    write_private_json(tmp_path / "tx.json", keys.provision("field-tx-9", "lora", form="compact", dev_eui=EUI))
    build = tmp_path / "build"
    out = linkseal("firmware", "build", "--device", tmp_path / "tx.json", "--board", "esp32-rak3172",
                   "--heartbeat", 2, "--record-interval", 150, "--out", build)
    assert "esp32-rak3172" in out
    settings = json.loads((build / "agent.json").read_text())
    assert settings["lorawan"]["limits"][0] == 51 and "broker" not in settings
    settings.update(log_seals=True, held_retry_ms=20)
    write_private_json(build / "agent.json", settings)
    return build


def device(db):
    try:
        return stored_report(db)["devices"].get("field-tx-9")
    except Exception:  # the hub is creating its schema right now
        return None


def sealed(board) -> set:
    return {(int(e), int(s)) for e, s in SEALED.findall(board.console())}


def stored(db) -> list:
    return sqlite3.connect(db).execute("SELECT epoch, seq FROM records WHERE device = 'field-tx-9'").fetchall()


@contextmanager
def rig(tmp_path, broker, keys, server, build, **modem):
    """The modem on its serial line, `hub run --lorawan` subscribed to the network server's
    broker, and the board flashed with `build` and running: (line, hub, board, flash output).
    Everything is stopped on the way out."""
    with ModemLine(server, broker.port, **modem) as line:
        hub = HubProcess(broker, keys.path, tmp_path / "hub.db", tmp_path / "hub.log", *lorawan_option(broker)).start()
        board = VirtualDevice(tmp_path / "board", uarts={2: line.port})
        try:
            wait_for(lambda: any(e["event"] == "lorawan_subscribed" for e in hub.events()), 30, "the subscription")
            board.start()
            yield line, hub, board, linkseal("firmware", "flash", "--port", board.port, "--build", build, "--verify")
        finally:
            hub.stop()
            board.stop()


def lorawan_option(broker):  # hub run reads the network server on the test's broker
    return ("--lorawan", f"chirpstack+mqtt://127.0.0.1:{broker.port}")


def test_firmware_through_the_modem_and_chirpstack_into_the_hub_with_a_kill_9(tmp_path, broker, keys, lora_build):
    air = Radio([Gateway("gw-roof", loss=0.0, rssi=-98, snr=8.0), Gateway("gw-far", loss=0.4, rssi=-117, snr=-6.0)])
    server = NetworkServer(CHIRPSTACK, EUI, air, publish=None)
    with rig(tmp_path, broker, keys, server, lora_build, data_rate=0, duty_cycle=0.0, time_scale=0.01) as (
            line, hub, board, out):
        assert "verified" in out and "umqtt" not in out  # a LoRaWAN build needs no MQTT client
        board.wait_console("linkseal: connected, epoch 1", 60)
        wait_for(lambda: (device(hub.db) or {}).get("valid", 0) >= 15, 90, "records through the network server")
        hub.signal(signal.SIGKILL)  # the network server's broker keeps the hub's session meanwhile
        hub.wait()
        wait_for(lambda: len(server.truth) >= 40, 90, "more uplinks while the hub is down")
        again = HubProcess(broker, keys.path, tmp_path / "hub.db", tmp_path / "hub-again.log", *lorawan_option(broker))
        try:
            again.start()
            wait_for(lambda: ((device(again.db) or {}).get("status") or {}).get("last") == "heartbeat", 60,
                     "a heartbeat after the restart")
            board.stop()  # the device stops sealing: what it sealed is fixed from here
            records_sent = [t for t in server.truth if t[1] == 10]
            wait_for(lambda: len(stored(again.db)) == len(records_sent), 60, "every record uplink stored")
        finally:
            again.stop()
    rows = stored(again.db)
    assert len(rows) == len(set(rows)), "a record stored twice"
    assert set(rows) <= sealed(board), "a stored record the board never sealed"
    # Nothing is lost: each gateway misses some, but gw-roof hears every uplink.
    entry = stored_report(again.db)["devices"]["field-tx-9"]
    assert entry["forged"] == entry["corrupt"] == entry["malformed"] == entry["duplicate"] == 0, entry
    assert entry["valid"] == len(rows) and entry["lost"] == 0, entry
    # The compact status messages arrived on their own fPort, read as the JSON ones are.
    assert entry["status"]["epoch"] == 1 and entry["status"]["reset_cause"] in ("power_on", "hard_reset")
    assert {t[1] for t in server.truth} == {10, 11}
    assert [t[0] for t in server.truth] == list(range(len(server.truth)))  # one session, fCnt from 0
    assert line.modem.counts["too_long"] == 0
    # Radio figures: every uplink went out and was heard (gw-roof hears all), none lost either side.
    radio = entry["radio"]
    assert radio["lost_after_transmission"] == radio["lost_before_transmission"] == 0, radio
    assert radio["uplinks"] == len(server.truth)
    assert radio["gateways"]["gw-roof"]["share"] == 1.0 and 0 < radio["gateways"]["gw-far"]["share"] < 1
    assert radio["spreading_factors"] == {"12": radio["spreading_factors"]["12"]}  # DR0: SF12 only
    link = stored_report(again.db)["links"]["lora"]["radio"]
    assert link["uplinks"] == radio["uplinks"] and link["gateways"]["gw-roof"]["frames"] == radio["uplinks"]


def test_the_duty_cycle_holds_frames_back_and_loses_none(tmp_path, broker, keys, lora_build):
    """At a 1% duty cycle the modem answers AT_DUTYCYCLE_RESTRICTED until its band is free: the
    firmware keeps the frame queued and sends it later, never drops it."""
    server = NetworkServer(CHIRPSTACK, EUI, Radio([Gateway("gw-roof")]), publish=None)
    # Airtime of a 51-byte uplink at DR5 (SF7) is 118 ms; at time_scale 0.02 the band closes
    # for 236 ms after each uplink, longer than the 150 ms between records.
    with rig(tmp_path, broker, keys, server, lora_build, data_rate=5, duty_cycle=0.01, time_scale=0.02) as (
            line, hub, board, _):
        wait_for(lambda: line.modem.counts["duty_cycle"] >= 5 and (device(hub.db) or {}).get("valid", 0) >= 10,
                 90, "frames held back by the duty cycle, and records arriving")
        board.stop()
        records_sent = [t for t in server.truth if t[1] == 10]
        wait_for(lambda: len(stored(hub.db)) == len(records_sent), 60, "every record uplink stored")
    entry = stored_report(hub.db)["devices"]["field-tx-9"]
    assert entry["lost"] == 0 and entry["source_drops"] == 0, entry
    # Every sealed record below the last one sent went out: the held ones waited, none was dropped.
    rows = sorted(stored(hub.db))
    assert rows == [(1, seq) for seq in range(len(rows))]


def test_a_frame_the_data_rate_cannot_carry_is_dropped_and_counted_never_cut(tmp_path, broker, keys):
    """Provisioned for DR3 (115 bytes), sending 80-byte records; the network lowers the data
    rate to DR0 (51 bytes): the firmware drops each frame that no longer fits, counts it as a
    source drop with its reason (too_large), and the modem never sees a frame over its limit."""
    write_private_json(tmp_path / "tx.json", keys.provision("field-tx-9", "lora", data_rate="DR3", dev_eui=EUI))
    build = tmp_path / "build"
    linkseal("firmware", "build", "--device", tmp_path / "tx.json", "--board", "esp32-rak3172", "--heartbeat", 1,
             "--record-interval", 150, "--out", build)
    settings = json.loads((build / "agent.json").read_text())
    write_private_json(build / "agent.json", {**settings, "held_retry_ms": 20})
    (build / "records.py").write_text("def read():\n    return b'x' * 80\n")  # the integrator's own hook
    server = NetworkServer(CHIRPSTACK, EUI, Radio([Gateway("gw-roof")]), publish=None)
    with rig(tmp_path, broker, keys, server, build, data_rate=3, duty_cycle=0.0, time_scale=0.01) as (
            line, hub, board, _):
        wait_for(lambda: (device(hub.db) or {}).get("valid", 0) >= 5, 90, "records at DR3")
        line.modem.data_rate = 0  # ADR: the network asks for SF12, 51 bytes
        wait_for(lambda: ((device(hub.db) or {}).get("status") or {}).get("too_large", 0) >= 5, 90,
                 "frames dropped as too large, reported by the device")
    status = device(hub.db)["status"]
    assert status["source_drops"] >= status["too_large"] >= 5
    assert re.search(r"frame dropped unsent: frame of 9\d bytes over the 51 of DR0", board.console())
    assert line.modem.counts["too_long"] == 0  # never handed to the modem, never cut
