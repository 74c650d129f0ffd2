"""Firmware budgets: .mpy sizes of a real build, and the heap the agent core and a full
64-frame RAM queue take on MicroPython (gc.mem_alloc on the WebAssembly runtime)."""

import json
import tempfile
from pathlib import Path

from hub.boards import board
from hub.firmware_build import AGENT_BUDGET, FIRMWARE_BUDGET, build
from hub.keys import KeyFile, write_private_json
from tools.micropython import run_micropython

# Three chunks: this port's gc.collect() frees only between chunks (see tools/micropython.mjs).
HEAP_CODE = [
    "import gc",
    "gc.collect()\nbefore = gc.mem_alloc()",
    "from agent import Sealer\nfrom store import Store",
    "gc.collect()\ncode = gc.mem_alloc() - before\n"
    "sealer = Sealer('ward12-bed07', b'k' * 32, link='wifi', epoch=3)\n"
    "queue = Store('/queue', ram_frames=64, file_bytes=32768)\n"
    "for i in range(1000):  # steady state: frames keep coming, the RAM queue stays full\n"
    "    queue.put(sealer.seal(b'{\"hr\": 71, \"spo2\": 97, \"t\": %d}' % i))\n"
    "    if len(queue.ram) == 64 and i % 2:\n"
    "        queue.pop()",
    "gc.collect()\nprint(gc.mem_alloc() - before, code)",
]


def main():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        keyfile = KeyFile.create(tmp / "hub.keys")
        write_private_json(tmp / "d.json", keyfile.provision("ward12-bed07", "wifi"))
        sizes = build(tmp / "d.json", board("esp32"), tmp / "build")
        built = {"/" + str(p.relative_to(tmp / "build")): p.read_bytes()
                 for p in (tmp / "build" / "lib").rglob("*.mpy")}
    print(json.dumps({"figure": "firmware_agent_mpy_bytes", "value": sizes["agent"], "target": f"<= {AGENT_BUDGET}"}))
    print(json.dumps({"figure": "firmware_mpy_bytes", "value": sizes["firmware"], "target": f"<= {FIRMWARE_BUDGET}",
                      "note": "agent core + firmware modules built so far (epoch, store), umqtt aside"}))
    heap, code = (int(x) for x in run_micropython(HEAP_CODE, binary_files=built, agent_source=False).split()[-2:])
    print(json.dumps({"figure": "firmware_heap_bytes", "value": heap, "target": "<= 16384", "code_bytes": code,
                      "data_bytes": heap - code,
                      "note": "the built .mpy code + Sealer + a full 64-frame RAM queue, after "
                              "gc; not yet the whole main loop (no umqtt)"}))


if __name__ == "__main__":
    main()
