# Record encryption: AES-128 in counter mode (NIST SP 800-38A), encrypt-then-MAC, no byte
# added (docs/protocol.md, "Encryption"). Runs on MicroPython and CPython alike: the counter
# mode is ours, built on one AES block function (ECB) that encrypts a run of 16-byte blocks:
# MicroPython's cryptolib.aes(key, 1) on a board (stock ESP32 and RP2 firmware has ECB, not
# CTR), `cryptography`'s ECB encryptor on a host (shared/aes.py). Board and hub run this code.
# Kept small: it counts against the firmware's size budget.
import hashlib
import struct

from .sealer import hmac_pads


def encryption_key(device_key):
    """HKDF-Expand (RFC 5869), the device key as PRK, one block: HMAC-SHA256(device key,
    b"linkseal/v1 encryption key" | 0x01)[:16]. Never the MAC key itself."""
    inner, outer = hmac_pads(device_key)
    return hashlib.sha256(outer + hashlib.sha256(inner + b"linkseal/v1 encryption key\x01").digest()).digest()[:16]


_RUNS = {}  # blocks -> [b"", counter 0, counter 1, ...]: what a run of counter blocks joins


def ctr_xor(block, prefix, first, data):
    """data XOR the keystream of the counter blocks prefix (12 bytes) | counter (4 bytes,
    big-endian) from `first` on; block(bytes) encrypts whole 16-byte blocks (ECB)."""
    n = len(data)
    if not n:
        return b""
    blocks = (n + 15) >> 4
    run = None if first else _RUNS.get(blocks)
    if run is None:  # a device sends one or two sizes: few runs, each made once
        run = [b""] + [struct.pack(">I", (first + i) & 0xFFFFFFFF) for i in range(blocks)]
        if not first:
            _RUNS[blocks] = run
    # prefix.join(run): every counter block at once. Then one XOR of two integers (the
    # keystream's unused tail shifted off), not a loop over bytes: the interpreter's slow part.
    stream = int.from_bytes(block(prefix.join(run)), "big") >> (((blocks << 4) - n) << 3)
    return (int.from_bytes(data, "big") ^ stream).to_bytes(n, "big")


class RecordCipher:
    """Encrypts, and by the same operation decrypts, one device's record payloads. The record
    (epoch, seq) starts at counter block 0x01 (records; 0x02 is reserved for status messages,
    sent in clear) | key id | 0x0000 | epoch | seq | 0: unique while (epoch, seq) never repeats
    under a key, which the epoch store's write-before-use guarantees (docs/threat-model.md).
    block: a host's AES-ECB maker (shared/aes.py); a board's is cryptolib's."""

    def __init__(self, device_key, key_id, block=None):
        self.key_id = key_id
        key = encryption_key(device_key)
        if block:
            self._block = block(key)
        else:
            import cryptolib

            self._block = cryptolib.aes(key, 1).encrypt  # mode 1: ECB

    def apply(self, epoch, seq, data):
        return ctr_xor(self._block, struct.pack(">BBHII", 1, self.key_id, 0, epoch, seq), 0, data)
