"""docs/lorawan.md as a script: every sh block in order, in one shell, with this test's own
settings after the first block: a virtual board on a serial line to the RUI3 modem emulator
for the board (simulator/lorawan/), and a Mosquitto of the test's own for both the network
server's integration (ChirpStack JSON and protobuf, published by the emulated network server)
and the hub's broker. Then the hub's stored report must show the device's records and radio
figures, equal to what the emulated network server published."""

import json
from pathlib import Path

from hub.core.network_servers import CHIRPSTACK
from simulator.lorawan.modem_line import ModemLine
from simulator.lorawan.network import Gateway, NetworkServer, Radio
from simulator.virtual_device import VirtualDevice
from tools.guides import guide_blocks, run_guide
from tools.services import stored_report

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "lorawan.md"
DEV_EUI = "70b3d57ed0001a2b"


def test_the_lorawan_guide_run_in_order_brings_a_device_to_the_hub(tmp_path, broker):
    blocks = guide_blocks(GUIDE)
    assert len(blocks) == 6 and "LINKSEAL=" in blocks[0] and "hub run" in blocks[3] and "sim run" in blocks[-1]
    air = Radio([Gateway("gw-roof", loss=0.0, rssi=-99, snr=7.0), Gateway("gw-far", loss=0.5, rssi=-118, snr=-7.0)])
    server = NetworkServer(CHIRPSTACK, DEV_EUI, air, publish=None, binary=True)
    work = tmp_path / "work"
    work.mkdir()
    with ModemLine(server, broker.port, data_rate=5, duty_cycle=0.0, time_scale=0.01) as line:
        board = VirtualDevice(tmp_path / "board", uarts={2: line.port}).start()
        try:
            run = run_guide(blocks, f"NETWORK_SERVER=127.0.0.1:{broker.port}\nBROKER={broker.url}\n"
                                    f"BOARD_PORT={board.port}\nHEARTBEAT_S=2\nRECORD_INTERVAL_MS=200\n", work)
        finally:
            board.stop()
    hub_log = (work / "hub.log").read_text() if (work / "hub.log").exists() else ""
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:] + hub_log[-3000:]
    report = stored_report(work / "hub.db")
    device = report["devices"]["field-tx-3"]
    assert device["valid"] > 0 and device["forged"] == device["malformed"] == 0, device
    radio = device["radio"]
    heard = [t for t in server.truth if t[2]]
    assert radio["uplinks"] <= len(heard) and radio["lost_after_transmission"] == 0  # gw-roof hears every uplink
    assert radio["gateways"]["gw-roof"]["share"] == 1.0
    # The printed report has the Radio table; the simulator's comparison matched.
    assert "Radio (LoRaWAN)" in run.stdout and "MISMATCH" not in run.stdout
    assert json.loads((work / "sim-lora" / "report.json").read_text())["comparison"]["radio_matches_truth"]
    # The guide's files that hold secrets are private.
    for name in ("passphrase", "hub.keys", "field-tx-3.json", "ns-password"):
        assert (work / name).stat().st_mode & 0o077 == 0, name
