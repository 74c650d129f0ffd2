"""docs/relay.md as a script: every sh block in order, in one shell, with this test's own
settings after the first block: a virtual board and the Linux agent on one emulated RS-485 bus
(simulator/serial_line.py) with the relay at its other end, and a Mosquitto of the test's own.
Then the hub's stored report must hold every record the Linux device sealed, the board's too,
and no forgery."""

import re
from pathlib import Path

from simulator.serial_line import SerialBus
from simulator.virtual_device import VirtualDevice
from tools.guides import guide_blocks, run_guide
from tools.services import stored_report

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "relay.md"


def test_the_relay_guide_run_in_order_brings_a_bus_to_the_hub(tmp_path, broker):
    blocks = guide_blocks(GUIDE)
    assert len(blocks) == 7 and "LINKSEAL=" in blocks[0] and "hub run" in blocks[2] and "relay serial" in blocks[3]
    work = tmp_path / "work"
    work.mkdir()
    with SerialBus(2) as bus:
        board = VirtualDevice(tmp_path / "board", uarts={2: bus.device_ports[0]}, rs485={2: 4}).start()
        try:
            run = run_guide(blocks, f"BROKER={broker.url}\nRELAY_PORT={bus.relay_port}\nBOARD_PORT={board.port}\n"
                                    f"MONITOR_PORT={bus.device_ports[1]}\nHEARTBEAT_S=2\nRECORD_INTERVAL_MS=200\n", work)
        finally:
            board.stop()
    logs = "".join((work / name).read_text()[-2000:] for name in ("hub.log", "relay.log", "monitor.log")
                   if (work / name).exists())
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:] + logs
    report = stored_report(work / "hub.db")
    monitor, plc = report["devices"]["monitor-3"], report["devices"]["plc-7"]
    assert monitor["valid"] == 30 and monitor["lost"] == 0 and plc["valid"] > 0, (monitor, plc)
    assert report["links"]["rs485"].get("forged", 0) == 0 and report["links"]["rs485"].get("corrupt", 0) == 0
    assert '"ok": true' in run.stdout  # the relay's /health while it ran
    published = int(re.search(r"^linkseal_relay_published_total (\d+)$", run.stdout, re.M)[1])
    assert published >= 30  # its /metrics: at least the Linux device's records, carried
    for name in ("passphrase", "hub.keys", "plc-7.json", "monitor-3.json", "broker/relay-hall-2.password"):
        assert (work / name).stat().st_mode & 0o077 == 0, name
