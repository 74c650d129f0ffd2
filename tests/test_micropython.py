"""The agent core on real MicroPython 1.27 (npm WebAssembly port), byte for byte with CPython.

These run in `make test` and CI; tools/micropython.py raises if the runtime is missing.
"""

import ast
import json

from firmware.host.board_files import agent_sources
from tools.micropython import run_micropython

from .conftest import load_vectors

ALLOWED_IMPORTS = {"hashlib", "binascii", "struct", "time", "os", "json", "gc", "micropython", "cryptolib"}


def test_runtime_is_micropython():
    out = run_micropython("import sys\nprint(sys.implementation.name, sys.implementation.version[:2])")
    assert out.split() == ["micropython", "(1,", "27)"]


def test_vectors_seal_identically_on_micropython():
    vectors = load_vectors("frames")
    code = (
        "import json, binascii\nfrom agent import Sealer\n"
        f"vectors = json.loads({json.dumps(json.dumps(vectors))})\n"
        "for v in vectors:\n"
        "    s = Sealer(v['device_id'], binascii.unhexlify(v['key']), key_id=v['key_id'], link=v['link'],\n"
        "               epoch=v['epoch'], tag_len=v['tag_len'])\n"
        "    s.seq = v['seq']\n"
        "    print(binascii.hexlify(s.seal(binascii.unhexlify(v['payload']), v['timestamp_ms'])).decode())\n"
    )
    assert run_micropython(code).split() == [v["frame"] for v in vectors]


def test_sequence_advances_and_decode_round_trips_on_micropython():
    code = (
        "from agent import Sealer, topic_for\nfrom agent import frame\n"
        "s = Sealer('pump-1', b'k' * 32, link='ble', epoch=9, tag_len=8)\n"
        "for i in range(300):\n"
        "    f = s.seal(b'reading')\n"
        "    assert frame.decode(f)[2:4] == (9, i), i\n"
        "print(s.epoch, s.seq, topic_for('pump-1'))\n"
    )
    assert run_micropython(code).split() == ["9", "300", "linkseal/v1/pump-1/rec"]


def test_bad_input_raises_valueerror_on_micropython():
    code = (
        "from agent import Sealer\n"
        "cases = [('a/b', b'k' * 32, 'wifi'), ('', b'k' * 32, 'wifi'), ('x' * 65, b'k' * 32, 'wifi'),\n"
        "         ('dev#1', b'k' * 32, 'wifi'), ('dev+1', b'k' * 32, 'wifi'), ('pump', b'k' * 15, 'wifi'),\n"
        "         ('pump', b'k' * 32, 'carrier-pigeon')]\n"
        "for dev, key, link in cases:\n"
        "    try:\n"
        "        Sealer(dev, key, link=link)\n"
        "        print('accepted')\n"
        "    except ValueError:\n"
        "        print('ValueError')\n"
        "s = Sealer('pump', b'k' * 32, link='lora')\n"
        "s.seal(b'x' * s.max_payload)\n"
        "try:\n"
        "    s.seal(b'x' * (s.max_payload + 1))\n"
        "    print('accepted')\n"
        "except ValueError:\n"
        "    print('ValueError', s.seq)\n"
    )
    assert run_micropython(code).split() == ["ValueError"] * 8 + ["1"]


def test_agent_imports_only_what_micropython_has():
    for name, source in agent_sources(encrypt=True, compact=True).items():
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = {node.module.split(".")[0]}
            else:
                continue
            assert modules <= ALLOWED_IMPORTS, f"{name} imports {modules - ALLOWED_IMPORTS}"


def test_compact_vectors_seal_identically_on_micropython():
    vectors = load_vectors("compact")
    code = (
        "import json, binascii\nfrom agent import Sealer\n"
        f"vectors = json.loads({json.dumps(json.dumps(vectors))})\n"
        "for v in vectors:\n"
        "    s = Sealer(v['device_id'], binascii.unhexlify(v['key']), key_id=v['key_id'], link=v['link'],\n"
        "               epoch=v['epoch'], tag_len=v['tag_len'], compact=True)\n"
        "    payload = binascii.unhexlify(v['payload'])\n"
        "    if v['status']:\n"
        "        frame = s.seal_status(payload)\n"
        "    else:\n"
        "        s.seq = v['seq']\n"
        "        frame = s.seal(payload, v['timestamp_ms'])\n"
        "    print(binascii.hexlify(frame).decode())\n"
    )
    assert run_micropython(code).split() == [v["frame"] for v in vectors]


def test_compact_status_is_the_same_bytes_on_micropython():
    from agent import Sealer
    from agent.compact_status import compact_status_payload
    from agent.status import BIRTH, HEARTBEAT

    sealer = Sealer("field-tx-3", bytes(range(32)), link="lora", epoch=5, tag_len=8, compact=True)
    for _ in range(200):
        sealer.seal(b"r")
    expected = [compact_status_payload(BIRTH, sealer, 3, 70000, None, "watchdog", 2, [4, 9, 12, 4], 1).hex(),
                compact_status_payload(HEARTBEAT, sealer, 0, 0, [5, 199]).hex()]
    code = """
import binascii
from agent import Sealer
from agent.compact_status import compact_status_payload
from agent.status import BIRTH, HEARTBEAT
s = Sealer("field-tx-3", bytes(range(32)), link="lora", epoch=5, tag_len=8, compact=True)
for _ in range(200):
    s.seal(b"r")
print(binascii.hexlify(compact_status_payload(BIRTH, s, 3, 70000, None, "watchdog", 2, [4, 9, 12, 4], 1)).decode())
print(binascii.hexlify(compact_status_payload(HEARTBEAT, s, 0, 0, [5, 199])).decode())
"""
    assert run_micropython(code).split() == expected
