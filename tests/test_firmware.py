"""Device-side firmware modules on real MicroPython 1.27 (WebAssembly): epoch and store-and-forward."""

import re
from pathlib import Path

from firmware.host.board_files import device_sources
from tools.micropython import run_micropython


def on_device(code: str) -> list[str]:
    files = {"/" + name: source.read_text() for name, source in device_sources().items()}
    return run_micropython(code, files=files).split("\n")[:-1]


def test_epoch_advances_persists_and_never_goes_back():
    out = on_device("""
import re
import epoch, os
epoch.write('/epoch', 0)
print(epoch.advance('/epoch'), epoch.advance('/epoch'), epoch.current('/epoch'))
open('/epoch', 'w').write('7 deadbeef\\n')          # damaged: the CRC does not match
try:
    epoch.advance('/epoch')
except epoch.EpochError as exc:
    print('refused', 'damaged' in str(exc))
os.remove('/epoch')
try:
    epoch.advance('/epoch')
except epoch.EpochError as exc:
    print('refused', 'missing' in str(exc))
epoch.write('/epoch', 41)
os.rename('/epoch', '/epoch.tmp')                   # a crash between remove and rename
print(epoch.advance('/epoch'))
""")
    assert out == ["1 2 2", "refused True", "refused True", "42"]


def test_store_keeps_order_through_ram_file_and_reboot():
    out = on_device("""
from store import Store
s = Store('/q', ram_frames=4, file_bytes=1000)
for i in range(10):
    s.put(b'frame-%d' % i)
print(len(s), s.peek())
s.pop(); s.pop()
print(len(s), s.peek())
s2 = Store('/q', ram_frames=4, file_bytes=1000)     # a reboot: RAM is gone, the file is not
got = []
while s2.peek() is not None:
    got.append(s2.peek()); s2.pop()
print(got)
print(len(s2), s2.source_drops)
""")
    assert out[0] == "10 b'frame-0'"
    assert out[1] == "8 b'frame-2'"
    assert out[2] == "[b'frame-2', b'frame-3', b'frame-4', b'frame-5']"  # 6..9 were in RAM
    assert out[3] == "0 0"


def test_store_drops_oldest_when_full_and_counts_them():
    out = on_device("""
from store import Store
import os
s = Store('/q', ram_frames=2, file_bytes=60)        # room for 6 frames of 8 bytes (+2 each)
for i in range(20):
    s.put(b'frame-%02d' % i)
order = []
while s.peek() is not None:
    order.append(s.peek()); s.pop()
print(s.source_drops, len(order), order[0], order[-1])
print(os.stat(s.path)[6] if s.path[1:] in os.listdir('/') else 0)
""")
    drops, delivered, first, last = out[0].split()
    assert int(drops) + int(delivered) == 20 and int(drops) > 0
    assert first == "b'frame-%02d'" % int(drops) and last == "b'frame-19'"  # oldest dropped, order kept
    assert int(out[1]) <= 60


def test_a_power_cut_during_compaction_loses_and_repeats_nothing(tmp_path, monkeypatch):
    """Cut the power at each step of a compaction: after the reboot, the queue still holds
    exactly the undelivered frames, in order."""
    from firmware.device import store

    class PowerCut(Exception):
        pass

    for step in ("_save_state", "remove"):
        path = str(tmp_path / f"{step}-q")
        queue = store.Store(path, ram_frames=0, file_bytes=100)
        for i in range(10):  # 10 x 10 bytes: the file is full
            queue.put(b"frame-%02d" % i)
        for _ in range(4):
            queue.pop()  # delivered: the next spill compacts them away
        real = {"_save_state": queue._save_state, "remove": store.os.remove}

        def cut(*args, step=step):
            if step == "_save_state" and queue.path.endswith(".1"):  # the switch to the new generation
                raise PowerCut
            if step == "remove" and args and args[0].endswith("-q"):
                raise PowerCut
            return real[step](*args)

        if step == "_save_state":
            monkeypatch.setattr(queue, "_save_state", cut)
        else:
            monkeypatch.setattr(store.os, "remove", cut)
        try:
            queue.put(b"frame-10")  # lost with the power, as a frame in RAM would be
            raise AssertionError("the compaction did not happen")
        except PowerCut:
            pass
        monkeypatch.undo()
        rebooted = store.Store(path, ram_frames=0, file_bytes=100)
        left = []
        while rebooted.peek() is not None:
            left.append(rebooted.peek())
            rebooted.pop()
        assert left == [b"frame-%02d" % i for i in range(4, 10)], step
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(f"{step}-q.") and
                      not p.name.endswith("state")) in ([], [f"{step}-q.1"]), step


def test_build_loads_on_micropython_and_seals_the_vectors(tmp_path):
    import json
    import stat
    import subprocess
    import sys

    from hub.keys.keyfile import KeyFile, write_private_json

    from .conftest import load_vectors

    keyfile = KeyFile.create(tmp_path / "hub.keys")
    device = tmp_path / "pump-1.json"
    write_private_json(device, keyfile.provision("pump-1", "wifi"))
    linkseal = Path(sys.executable).parent / "linkseal"
    result = subprocess.run([str(linkseal), "firmware", "build", "--device", str(device), "--board", "esp32",
                             "--broker", "mqtt://127.0.0.1:1883", "--out", str(tmp_path / "build")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    build = tmp_path / "build"
    agent_bytes = sum(p.stat().st_size for p in (build / "lib" / "agent").glob("*.mpy"))
    all_bytes = sum(p.stat().st_size for p in (build / "lib").rglob("*.mpy"))
    assert agent_bytes <= 6 * 1024 and all_bytes <= 16 * 1024  # the budgets
    assert stat.S_IMODE((build / "device.json").stat().st_mode) == 0o600
    assert json.loads((build / "device.json").read_text())["device_id"] == "pump-1"
    assert 'require("hmac")' in (build / "manifest.py").read_text()
    assert 'require("umqtt.simple")' not in (build / "manifest.py").read_text()  # esp32 firmware has it
    binaries = {"/" + str(p.relative_to(build)): p.read_bytes() for p in build.rglob("*") if p.is_file()}
    vectors = load_vectors("frames")
    out = run_micropython(
        "import json, binascii, epoch\n"
        "from agent import Sealer\n"
        "import agent.frame\n"
        "print(epoch.advance('/epoch'), epoch.advance('/epoch'))\n"
        f"for v in json.loads({json.dumps(json.dumps(vectors))}):\n"
        "    s = Sealer(v['device_id'], binascii.unhexlify(v['key']), key_id=v['key_id'], link=v['link'],\n"
        "               epoch=v['epoch'], tag_len=v['tag_len'])\n"
        "    s.seq = v['seq']\n"
        "    print(binascii.hexlify(s.seal(binascii.unhexlify(v['payload']), v['timestamp_ms'])).decode())\n",
        binary_files=binaries, agent_source=False).split()
    assert out[:2] == ["1", "2"]  # the build's first epoch is 0; each boot advances it
    assert out[2:] == [v["frame"] for v in vectors]


def test_unknown_board_is_an_input_error(tmp_path):
    import subprocess
    import sys

    linkseal = Path(sys.executable).parent / "linkseal"
    result = subprocess.run([str(linkseal), "firmware", "build", "--device", str(tmp_path / "d.json"), "--board",
                             "arduino-uno", "--broker", "mqtt://localhost", "--out", str(tmp_path / "b")], capture_output=True, text=True)
    assert result.returncode == 2 and "unknown board 'arduino-uno'" in result.stderr


def test_flash_input_errors_name_what_is_wrong(tmp_path):
    import subprocess
    import sys

    from hub.keys.keyfile import KeyFile, write_private_json

    linkseal = Path(sys.executable).parent / "linkseal"

    def flash(*args):
        return subprocess.run([str(linkseal), "firmware", "flash", *map(str, args)], capture_output=True, text=True,
                              timeout=120)

    not_a_build = flash("--port", "/dev/ttyUSB9", "--build", tmp_path)
    assert not_a_build.returncode == 2 and "not a build directory" in not_a_build.stderr
    keyfile = KeyFile.create(tmp_path / "hub.keys")
    write_private_json(tmp_path / "d.json", keyfile.provision("pump-1", "wifi"))
    subprocess.run([str(linkseal), "firmware", "build", "--device", tmp_path / "d.json", "--board", "esp32",
                    "--broker", "mqtt://127.0.0.1", "--out", tmp_path / "build"], check=True, capture_output=True)
    no_board = flash("--port", tmp_path / "no-such-port", "--build", tmp_path / "build")
    assert no_board.returncode == 2 and "no-such-port" in no_board.stderr and "Traceback" not in no_board.stderr
    no_lib = flash("--port", tmp_path / "no-such-port", "--build", tmp_path / "build", "--micropython-lib", tmp_path)
    assert no_lib.returncode == 2 and "no umqtt/simple.py in it" in no_lib.stderr


def test_build_for_a_tls_broker_puts_its_ca_on_the_board(tmp_path):
    import json
    import subprocess
    import sys

    from cryptography import x509

    from hub.keys.keyfile import KeyFile, write_private_json
    from hub.keys.pki import init_ca

    ca_pem = init_ca(tmp_path / "ca")
    keyfile = KeyFile.create(tmp_path / "hub.keys")
    write_private_json(tmp_path / "d.json", keyfile.provision("pump-1", "wifi"))
    linkseal = Path(sys.executable).parent / "linkseal"
    result = subprocess.run([str(linkseal), "firmware", "build", "--device", tmp_path / "d.json", "--board",
                             "rp2-pico-w", "--broker", "mqtts://broker.lan", "--ca-file", ca_pem, "--out",
                             tmp_path / "build"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    settings = json.loads((tmp_path / "build" / "agent.json").read_text())
    assert settings["broker"] == {"host": "broker.lan", "port": 8883, "tls": True, "ca": "ca.der"}
    der = (tmp_path / "build" / "ca.der").read_bytes()
    assert x509.load_der_x509_certificate(der) == x509.load_pem_x509_certificate(ca_pem.read_bytes())


def test_a_lorawan_build_and_its_input_errors(tmp_path):
    """A lora device builds for a board with a modem (its region's payload per data rate in
    agent.json); the wrong board, a broker for a LoRaWAN device or a wifi device on the modem
    board are input errors (exit 2, one line)."""
    import json
    import subprocess
    import sys

    from hub.keys.keyfile import KeyFile, write_private_json

    linkseal = Path(sys.executable).parent / "linkseal"
    keyfile = KeyFile.create(tmp_path / "hub.keys")
    write_private_json(tmp_path / "lora.json", keyfile.provision("tx-1", "lora", form="compact", region="US915",
                                                                 data_rate="DR1", dev_eui="0102030405060708"))
    write_private_json(tmp_path / "wifi.json", keyfile.provision("pump-1", "wifi"))

    def build(device, board, *extra):
        return subprocess.run([str(linkseal), "firmware", "build", "--device", tmp_path / device, "--board", board,
                               "--out", tmp_path / "build", *extra], capture_output=True, text=True, timeout=120)

    built = build("lora.json", "esp32-rak3172")
    assert built.returncode == 0, built.stderr
    settings = json.loads((tmp_path / "build" / "agent.json").read_text())
    assert settings["lorawan"]["limits"] == [11, 53, 125, 222, 222] and settings["lorawan"]["uart"] == 2
    assert (settings["lorawan"]["record_port"], settings["lorawan"]["status_port"]) == (10, 11)
    device = json.loads((tmp_path / "build" / "device.json").read_text())
    assert (device["form"], device["region"], device["max_frame"]) == ("compact", "US915", 53)
    for result, words in [
        (build("lora.json", "esp32", "--broker", "mqtt://127.0.0.1"), "has no LoRaWAN modem"),
        (build("lora.json", "esp32-rak3172", "--broker", "mqtt://127.0.0.1"), "reaches no broker"),
        (build("wifi.json", "esp32-rak3172"), "provision it with --link lora"),
        (build("lora.json", "esp32", "--transport", "lorawan"), "board esp32 has no LoRaWAN modem"),
        (build("wifi.json", "esp32"), "--broker is required"),
    ]:
        assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert build("lora.json", "esp32", "--transport", "mqtt", "--broker", "mqtt://127.0.0.1").returncode == 0


def test_a_uart_build_and_its_input_errors(tmp_path):
    """An rs485 device builds the uart transport from the board's serial table (UART, pins, the
    transceiver's DE pin), within the size budgets and without MQTT; a board with no serial line,
    a broker for a serial device, or --polled for an MQTT build are input errors."""
    import json
    import subprocess
    import sys

    from firmware.host.build import AGENT_BUDGET, FIRMWARE_BUDGET
    from hub.keys.keyfile import KeyFile, write_private_json

    linkseal = Path(sys.executable).parent / "linkseal"
    keyfile = KeyFile.create(tmp_path / "hub.keys")
    write_private_json(tmp_path / "plc.json", keyfile.provision("plc-7", "rs485"))
    write_private_json(tmp_path / "wifi.json", keyfile.provision("pump-1", "wifi"))

    def build(device, board, *extra):
        return subprocess.run([str(linkseal), "firmware", "build", "--device", tmp_path / device, "--board", board,
                               "--out", tmp_path / "build", *extra], capture_output=True, text=True, timeout=120)

    built = build("plc.json", "rp2-pico-w", "--polled", "--baud", "19200")
    assert built.returncode == 0, built.stderr
    sizes = [int(n) for n in re.findall(r"(\d+) bytes", built.stdout)]
    assert sizes[0] <= AGENT_BUDGET and sizes[1] <= FIRMWARE_BUDGET, built.stdout
    settings = json.loads((tmp_path / "build" / "agent.json").read_text())
    assert settings["serial"] == {"uart": 0, "tx": 0, "rx": 1, "de": 2, "baud": 19200, "polled": True}
    libs = {p.name for p in (tmp_path / "build" / "lib").iterdir()}
    assert "serial_link.mpy" in libs and "transport.mpy" not in libs and "lorawan.mpy" not in libs
    assert 'module("serial_link.py"' in (tmp_path / "build" / "manifest.py").read_text()
    for result, words in [
        (build("plc.json", "esp32-rak3172"), "board esp32-rak3172 names no serial line"),
        (build("plc.json", "esp32", "--broker", "mqtt://127.0.0.1"), "reaches no broker"),
        (build("wifi.json", "esp32", "--broker", "mqtt://127.0.0.1", "--polled"), "for the uart transport only"),
    ]:
        assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert build("wifi.json", "esp32", "--transport", "uart").returncode == 0  # any device may use a serial line


def test_a_ble_build_within_budget_and_boards_without_bluetooth_refused(tmp_path):
    import json
    import subprocess
    import sys

    from firmware.host.build import AGENT_BUDGET, FIRMWARE_BUDGET
    from hub.keys.keyfile import KeyFile, write_private_json

    linkseal = Path(sys.executable).parent / "linkseal"
    keyfile = KeyFile.create(tmp_path / "hub.keys")
    write_private_json(tmp_path / "oxi.json", keyfile.provision("oxi-4", "ble"))

    def build(board, *extra):
        return subprocess.run([str(linkseal), "firmware", "build", "--device", tmp_path / "oxi.json", "--board", board,
                               "--out", tmp_path / "build", *extra], capture_output=True, text=True, timeout=120)

    built = build("rp2-pico-w")
    assert built.returncode == 0, built.stderr
    sizes = [int(n) for n in re.findall(r"(\d+) bytes", built.stdout)]
    assert sizes[0] <= AGENT_BUDGET and sizes[1] <= FIRMWARE_BUDGET, built.stdout
    libs = {p.name for p in (tmp_path / "build" / "lib").iterdir()}
    assert {"ble_link.mpy", "serial_link.mpy"} <= libs and not {"transport.mpy", "uart_link.mpy"} & libs
    assert json.loads((tmp_path / "build" / "agent.json").read_text())["transport"] == "ble_link"
    refused = build("esp32-rak3172", "--transport", "ble")
    assert refused.returncode == 2 and "has no Bluetooth" in refused.stderr and "Traceback" not in refused.stderr
