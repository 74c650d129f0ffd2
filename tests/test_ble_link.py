"""BLE: the firmware's ble transport and the relay, with a stand-in for the radio.

What runs against what: no Bluetooth controller can run here. The fragmenting (ble_link.py's
notifications of at most MTU - 3 bytes) runs on real MicroPython against a recording
`bluetooth` module; the reassembly and acknowledgement logic (the relay's Intake and the serial
packets it shares with the uart transport) runs on CPython, exhaustively over lost and repeated
notifications; end to end, the real firmware on a virtual board talks through
simulator/board/bluetooth.py and simulator/ble_air.py (the stand-in for the air and the relay's
BLE central) to the real Relay, a real Mosquitto and `hub run`. relay/ble_central.py (bleak)
is checked only for refusing clearly without a controller.
"""

import json
import re
import sqlite3
import subprocess

import pytest

from agent.sealer import sealer_for
from firmware.device import serial_link
from firmware.host.board_files import device_dir
from relay.intake import Intake
from shared.device_config import write_private_json
from simulator.ble_air import BleAir, NotificationFaults
from simulator.serial_line import Truth
from simulator.virtual_device import VirtualDevice
from tools.micropython import run_micropython
from tools.services import LINKSEAL, HubProcess, stored_report, wait_for

RECORDING_BLUETOOTH = """
class UUID:
    def __init__(self, value):
        self.value = bytes(value)

class BLE:
    sent = []
    def active(self, *a): return True
    def config(self, **k): pass
    def irq(self, handler): self.handler = handler
    def gatts_register_services(self, services): return ((13, 15),)
    def gatts_set_buffer(self, *a): pass
    def gap_advertise(self, interval, adv_data=None): BLE.adv = adv_data
    def gattc_exchange_mtu(self, conn): BLE.asked = True
    def gatts_notify(self, conn, handle, data): BLE.sent.append(bytes(data))
    def gatts_read(self, handle): return b""
"""


def test_notifications_fit_the_mtu_on_micropython():
    sizes = [1, 19, 20, 21, 40, 61, 200, 244, 245, 700]
    code = ("import json, bluetooth, ble_link\n"
            "uart = ble_link.NordicUart()\n"
            "out = {'adv': list(bluetooth.BLE.adv)}\n"
            "for mtu in (23, 247):\n"
            "  uart._irq(1, (1, 0, b''))\n"
            "  out['asked'] = bluetooth.BLE.asked\n"
            "  uart._irq(21, (1, mtu))\n"
            "  for n in " + json.dumps(sizes) + ":\n"
            "    bluetooth.BLE.sent = []\n"
            "    uart.write((bytes(range(1, 256)) * 3)[:n])\n"
            "    out['%d-%d' % (mtu, n)] = [list(c) for c in bluetooth.BLE.sent]\n"
            "print(json.dumps(out))\n")
    files = {"/lib/bluetooth.py": RECORDING_BLUETOOTH,
             **{f"/lib/{name}.py": (device_dir() / f"{name}.py").read_text() for name in ("ble_link", "serial_link")}}
    out = json.loads(run_micropython(code, files=files).strip().splitlines()[-1])
    assert out["asked"]  # the device asks for the MTU exchange on every connect
    # The advertisement: flags, then the NUS UUID 6E400001-B5A3-F393-E0A9-E50E24DCCA9E little-endian.
    assert bytes(out["adv"])[5:] == bytes(reversed(bytes.fromhex("6E400001B5A3F393E0A9E50E24DCCA9E")))
    for mtu in (23, 247):
        for n in sizes:
            chunks = [bytes(c) for c in out[f"{mtu}-{n}"]]
            assert b"".join(chunks) == (bytes(range(1, 256)) * 3)[:n]
            assert all(len(c) <= mtu - 3 for c in chunks) and all(len(c) == mtu - 3 for c in chunks[:-1])


def packets_and_frames():
    config = {"device_id": "oxi-4", "key": "00" * 32, "key_id": 0, "link": "ble", "tag_len": 16}
    sealer = sealer_for(config, 1)
    frames = [sealer.seal(b'{"spo2": 97, "hr": 71}'), sealer.seal(b'{"spo2": 96, "hr": 72}')]
    return [serial_link.packet(serial_link.RECORD, "oxi-4", f) for f in frames], frames


def fragments(data: bytes, mtu: int) -> list:
    step = mtu - 3
    return [data[i:i + step] for i in range(0, len(data), step)]


@pytest.mark.parametrize("mtu", [23, 24, 27, 64, 247])
def test_lost_and_repeated_notifications_cost_only_their_packet(mtu):
    """Every single lost or repeated notification of the first packet, at every MTU: that packet
    never arrives intact (no ack: the device sends it again) unless what was lost was only its
    closing delimiter, the next one always does, and damage is counted once, never published
    under another device's name."""
    (first, second), (frame1, frame2) = packets_and_frames()
    parts = fragments(first, mtu)
    whole = Intake().feed(b"".join(parts + fragments(second, mtu)))
    assert [(a.frame, a.intact) for a in whole] == [(frame1, True), (frame2, True)]
    for i in range(len(parts)):
        for damaged in (parts[:i] + parts[i + 1:], parts[:i + 1] + parts[i:]):  # lost, repeated
            intake = Intake()
            arrivals = []
            for chunk in damaged + fragments(second, mtu):
                arrivals += intake.feed(chunk)
            intact = [a.frame for a in arrivals if a.intact]
            counts = intake.counts
            damage = counts["not_cobs"] + counts["header_damaged"] + counts["frames_damaged"]
            truth = Truth()  # what a receiver splitting at 0x00 gets, against what was sent
            truth.add(first, b"".join(damaged))
            truth.add(second, second)
            assert all(a.device == "oxi-4" for a in arrivals)
            assert intact[-1:] == [frame2] and len(intact) == truth.counts["intact"], (mtu, i)
            assert damage == truth.counts["damaged"] <= 1, (mtu, i, counts)  # at most its own packet


def test_the_bleak_relay_refuses_clearly_without_a_controller(tmp_path):
    result = subprocess.run([str(LINKSEAL), "relay", "ble", "--broker", "mqtt://127.0.0.1:1", "--name", "ward-4",
                             "--state-dir", str(tmp_path / "spool")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "no Bluetooth controller" in result.stderr and "Traceback" not in result.stderr


SEALED = re.compile(r"linkseal: sealed (\d+) (\d+)")
FINITE_SOURCE = """
_count = 0


def read():
    global _count
    if _count >= 40:
        return None
    _count += 1
    return b'{"spo2": 97, "n": %d}' % _count
"""


def ble_build(tmp_path, keys):
    write_private_json(tmp_path / "oxi.json", keys.provision("oxi-4", "ble"))
    build = tmp_path / "build"
    result = subprocess.run([str(LINKSEAL), "firmware", "build", "--device", str(tmp_path / "oxi.json"), "--board",
                             "esp32", "--heartbeat", "2", "--record-interval", "100", "--out", str(build)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    settings = json.loads((build / "agent.json").read_text())
    assert settings["transport"] == "ble_link" and "ble" in settings
    settings["log_seals"] = True
    settings["ble"]["ack_timeout_ms"] = 400
    write_private_json(build / "agent.json", settings)
    (build / "records.py").write_text(FINITE_SOURCE)
    return build


@pytest.mark.parametrize("mtu, faults", [(23, NotificationFaults(seed=3, lost=0.03, repeated=0.03)), (247, None)],
                         ids=["mtu23-lossy", "mtu247-clean"])
def test_firmware_over_ble_through_the_relay_into_the_hub(tmp_path, broker, keys, mtu, faults):
    from relay.broker import Publisher
    from relay.run import Relay
    from relay.spool import Spool
    from shared.log import EventLog
    from shared.settings import parse_broker

    build = ble_build(tmp_path, keys)
    with BleAir(central_mtu=mtu, faults=faults) as air:
        hub = HubProcess(broker, keys.path, tmp_path / "hub.db", tmp_path / "hub.log").start()
        log = EventLog(json_lines=True, stream=open(tmp_path / "relay.log", "w"))
        relay = Relay(Spool(tmp_path / "spool"), Publisher(parse_broker(broker.url), "ward-4", log), log)
        board = VirtualDevice(tmp_path / "board", uarts={99: air.board_port})
        broker_thread = None
        try:
            hub.wait_connected()
            broker_thread = relay.start()
            board.start()
            subprocess.run([str(LINKSEAL), "firmware", "flash", "--port", board.port, "--build", str(build)],
                           check=True, capture_output=True, timeout=300)
            wait_for(air.connected.is_set, 60, "the board to advertise and the stand-in central to connect")
            relay.add_line(air.port())
            db = tmp_path / "hub.db"
            stored = lambda: sqlite3.connect(db).execute("SELECT epoch, seq FROM records").fetchall()  # noqa: E731
            wait_for(lambda: len(stored()) >= 40, 240, "every record over BLE")
            board.stop()
            counts = relay.figures()
            wait_for(lambda: stored_report(db)["devices"]["oxi-4"]["corrupt"] == counts.get("line_frames_damaged", 0),
                     30, "the hub to count each damaged frame the relay published")
        finally:
            board.stop()
            if broker_thread is not None:
                relay.stop(broker_thread)
            hub.stop()
    rows = stored()
    sealed = {(int(e), int(s)) for e, s in SEALED.findall(board.console())}
    assert len(rows) == len(set(rows)) == 40 and set(rows) == sealed
    device = stored_report(db)["devices"]["oxi-4"]
    assert device["link"] == "ble" and device["valid"] == 40 and device["forged"] == 0 and device["lost"] == 0
    assert air.mtu == mtu  # the exchange the device asked for settled the central's MTU
    damaged = counts.get("line_not_cobs", 0) + counts.get("line_header_damaged", 0) + counts.get("line_frames_damaged", 0)
    assert damaged == air.truth.counts["damaged"], (counts, air.truth.counts)
    if faults is not None:
        assert air.truth.counts["damaged"] > 0 and device["corrupt"] == counts.get("line_frames_damaged", 0)
