"""Firmware budgets: .mpy sizes of a real build, and the heap of the whole agent running on
the virtual board (simulator/virtual_device.py) in steady state with a full 64-frame RAM queue,
connected through umqtt.simple to a real Mosquitto.

The heap is read with gc.mem_alloc / gc.mem_free after gc.collect() in a console command of
its own: this port's collector frees only between top-level runs (tools/micropython.mjs).
"""

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from firmware.host.build import (AGENT_BUDGET, FIRMWARE_BUDGET, agent_settings, ble_settings, build, lorawan_settings,
                                  serial_settings)
from hardware.board_registry import board
from hub.keys.keyfile import KeyFile, write_private_json
from hub.service.config import parse_broker
from simulator.micropython_lib import install as install_umqtt
from simulator.virtual_device import VirtualDevice
from tools.services import Mosquitto

# main.py for the measurement: the baseline before any of our code, then the code loaded.
BENCH_MAIN = ("import gc\ngc.collect()\nbase = gc.mem_alloc()\n"
              "import app, umqtt.simple\n")
# Then, at the console: run the real agent loop until its RAM queue is full and stays full
# (records every 5 ms, at most 50 sent a second), and measure after a collection.
RUN = ("import gc, time\ngc.collect()\ncode = gc.mem_alloc() - base\nagent, feed = app.start()\n"
       "for _ in range(600):\n  feed()\n  agent.step()\n  time.sleep_ms(5)\n")
MEASURE = ("import gc\ngc.collect()\nprint('HEAP', gc.mem_alloc() - base, code, len(agent.store.ram), len(agent.store),"
           " agent.transport.connected())\n")
# Flash writes in steady state: records every 25 ms, under the 50/s send limit, so the queue
# stays short and only the seal mark writes (sealmark.py), until 2000 records are sealed.
STEADY = ("agent, feed = app.start()\n"
          "while agent.sealer.seq < 2000:\n  feed()\n  agent.step()\n  time.sleep_ms(5)\n"
          "print('WRITES', agent.mark.writes + agent.store.writes, agent.sealer.seq, len(agent.store))\n")


def mpremote(port, code):
    # `resume`: no soft reset between commands, so the interpreter keeps main.py's state.
    return subprocess.run([sys.executable, "-m", "mpremote", "connect", port, "resume", "exec", code],
                          capture_output=True, text=True, timeout=300, check=True).stdout


def steady_flash_writes(tmp: Path, broker) -> tuple:
    """(flash writes, records sealed, frames queued at the end) of a connected board."""
    settings = agent_settings(parse_broker(broker.url), board("esp32"), record_interval_ms=25)
    build(tmp / "d.json", board("esp32"), tmp / "steady-build", settings)
    flash = tmp / "steady-board"
    shutil.copytree(tmp / "steady-build", flash)
    install_umqtt(flash)
    (flash / "main.py").write_text("import time, app\n")
    with VirtualDevice(flash) as device:
        device.wait_console(">>>", 60)
        return tuple(int(x) for x in mpremote(device.port, STEADY).split("WRITES")[1].split())


def uart_heap(tmp: Path, broker, keyfile) -> tuple:
    """(heap, code, RAM queue, queued, connected) of the uart build on a virtual board, its UART
    on an emulated RS-485 line to `linkseal relay serial` and the broker."""
    from simulator.serial_line import SerialBus
    from tools.services import RelayProcess

    write_private_json(tmp / "plc.json", keyfile.provision("plc-7", "rs485"))
    settings = serial_settings(board("esp32"), record_interval_ms=5)
    build(tmp / "plc.json", board("esp32"), tmp / "uart-heap-build", settings)
    flash = tmp / "uart-board"
    shutil.copytree(tmp / "uart-heap-build", flash)
    (flash / "main.py").write_text(BENCH_MAIN.replace(", umqtt.simple", ""))
    with SerialBus(1) as line:
        relay = RelayProcess(broker, line.relay_port, tmp / "uart-spool", tmp / "uart-relay.log").start()
        try:
            with VirtualDevice(flash, uarts={2: line.device_ports[0]}, rs485={2: 4}) as device:
                device.wait_console(">>>", 60)
                mpremote(device.port, RUN)
                return mpremote(device.port, MEASURE).split()[1:]
        finally:
            relay.stop()


def encrypted_sizes(tmp: Path, keyfile, broker) -> dict:
    """transport -> .mpy sizes of the build of a device provisioned with --encrypt (the cipher added)."""
    write_private_json(tmp / "enc.json", keyfile.provision("enc-1", "wifi", encrypt=True))
    settings = {"mqtt": agent_settings(parse_broker(broker.url), board("esp32")), "uart": serial_settings(board("esp32")),
                "ble": ble_settings(board("esp32"))}
    return {name: build(tmp / "enc.json", board("esp32"), tmp / f"enc-{name}", each) for name, each in settings.items()}


def main():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        keyfile = KeyFile.create(tmp / "hub.keys")
        write_private_json(tmp / "d.json", keyfile.provision("ward12-bed07", "wifi"))
        (tmp / "broker").mkdir()
        broker = Mosquitto(tmp / "broker").start_on_a_free_port()
        try:
            settings = agent_settings(parse_broker(broker.url), board("esp32"), record_interval_ms=5)
            sizes = build(tmp / "d.json", board("esp32"), tmp / "build", settings)
            flash = tmp / "board"
            shutil.copytree(tmp / "build", flash)
            install_umqtt(flash)
            (flash / "main.py").write_text(BENCH_MAIN)
            with VirtualDevice(flash) as device:
                device.wait_console(">>>", 60)  # main.py has run: the REPL is up
                mpremote(device.port, RUN)
                heap, code, ram, queued, connected = mpremote(device.port, MEASURE).split()[1:]
            writes, sealed, queued_steady = steady_flash_writes(tmp, broker)
            lora = keyfile.provision("field-tx-3", "lora", region="EU868", dev_eui="70b3d57ed0001a2b")
            write_private_json(tmp / "lora.json", lora)
            lorawan_sizes = build(tmp / "lora.json", board("esp32-rak3172"), tmp / "lora-build",
                                  lorawan_settings(board("esp32-rak3172"), lora))
            write_private_json(tmp / "plc.json", keyfile.provision("plc-7", "rs485"))
            uart_sizes = build(tmp / "plc.json", board("esp32"), tmp / "uart-build", serial_settings(board("esp32")))
            write_private_json(tmp / "oxi.json", keyfile.provision("oxi-4", "ble"))
            ble_sizes = build(tmp / "oxi.json", board("esp32"), tmp / "ble-build", ble_settings(board("esp32")))
            uart_heap_figures = uart_heap(tmp, broker, keyfile)
            encrypted = encrypted_sizes(tmp, keyfile, broker)
        finally:
            broker.stop()
    print(json.dumps({"figure": "device_flash_writes_per_1000_records", "value": round(writes * 1000 / sealed, 1),
                      "target": "well below 1000 (never one per record)", "records": sealed,
                      "queued_at_end": queued_steady, "note": "files the agent wrote or replaced on the virtual board, "
                      "connected, records every 25 ms: the seal mark once per 64 records; the epoch file's one write "
                      "per boot aside"}))
    print(json.dumps({"figure": "firmware_agent_mpy_bytes", "value": sizes["agent"], "target": f"<= {AGENT_BUDGET}"}))
    print(json.dumps({"figure": "firmware_mpy_bytes", "value": sizes["firmware"], "target": f"<= {FIRMWARE_BUDGET}",
                      "note": "agent core + firmware (app, transport, epoch, sealmark, store, records), umqtt aside"}))
    print(json.dumps({"figure": "firmware_mpy_bytes_lorawan", "value": lorawan_sizes["firmware"],
                      "target": f"<= {FIRMWARE_BUDGET}", "note": "agent core + firmware with the lorawan transport "
                      "(RUI3 modem) instead of MQTT: the esp32-rak3172 build"}))
    print(json.dumps({"figure": "firmware_mpy_bytes_uart", "value": uart_sizes["firmware"],
                      "target": f"<= {FIRMWARE_BUDGET}", "note": "agent core + firmware with the uart transport "
                      "(serial line to the relay, RS-485 DE pin) instead of MQTT"}))
    print(json.dumps({"figure": "firmware_mpy_bytes_ble", "value": ble_sizes["firmware"],
                      "target": f"<= {FIRMWARE_BUDGET}", "note": "agent core + firmware with the ble transport "
                      "(the Nordic UART Service over the bluetooth IRQ API, the serial packets)"}))
    print(json.dumps({"figure": "firmware_agent_mpy_bytes_encrypted", "value": encrypted["mqtt"]["agent"],
                      "target": f"<= {AGENT_BUDGET}", "cipher_bytes": encrypted["mqtt"]["cipher"],
                      "note": "the agent core of a device provisioned with --encrypt; agent/cipher.py rides beside it "
                              "only in such builds"}))
    for name, sizes_enc in encrypted.items():
        print(json.dumps({"figure": f"firmware_mpy_bytes_encrypted_{name}", "value": sizes_enc["firmware"],
                          "target": f"<= {FIRMWARE_BUDGET}", "cipher_bytes": sizes_enc["cipher"],
                          "note": f"the {name} build of a device that encrypts its records"}))
    heap_u, code_u, ram_u, queued_u, connected_u = uart_heap_figures
    print(json.dumps({"figure": "firmware_heap_bytes_uart", "value": int(heap_u) - int(code_u), "target": "<= 16384",
                      "ram_queue_frames": int(ram_u), "queued_frames": int(queued_u),
                      "connected": connected_u == "True", "note": "as firmware_heap_bytes, with the uart transport "
                      "on an emulated RS-485 line to `relay serial` (no MQTT client on the board)"}))
    heap, code = int(heap), int(code)
    state = {"ram_queue_frames": int(ram), "queued_frames": int(queued), "connected": connected == "True"}
    print(json.dumps({"figure": "firmware_heap_bytes", "value": heap - code, "target": "<= 16384", **state,
                      "note": "the whole agent loop on the virtual board, connected through umqtt.simple, RAM "
                              "queue full: objects and buffers, with the code frozen into the image (manifest.py)"}))
    print(json.dumps({"figure": "firmware_heap_with_code_bytes", "value": heap, "code_bytes": code, **state,
                      "note": "the same with the .mpy files (and umqtt.simple's source) loaded from the filesystem "
                              "into the heap, as a stock-firmware board runs them: over 16 KB; freeze to meet it"}))


if __name__ == "__main__":
    main()
