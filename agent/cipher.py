# Record encryption: AES-128 in counter mode (NIST SP 800-38A), encrypt-then-MAC, no byte
# added (docs/protocol.md, "Encryption"). Runs on MicroPython and CPython alike: the counter
# mode is ours, built on one AES block function (ECB) that encrypts a run of 16-byte blocks:
# MicroPython's cryptolib.aes(key, 1) on a board (stock ESP32 and RP2 firmware has ECB, not
# CTR), `cryptography`'s ECB encryptor on a host (shared/aes.py), so both seal and open with
# this same code.
import hashlib
import struct

from .sealer import hmac_pads

# HKDF-Expand (RFC 5869) with the device key as PRK, one block: info | 0x01.
KEY_INFO = b"linkseal/v1 encryption key\x01"
KEY_LEN = 16
RECORD = 1  # the counter block's first byte; 2 is reserved for status messages (sent in clear)


def encryption_key(device_key):
    """The AES-128 key of a device: HMAC-SHA256(device key, info | 0x01)[:16], never the MAC key."""
    ipad, opad = hmac_pads(bytes(device_key))
    return hashlib.sha256(opad + hashlib.sha256(ipad + KEY_INFO).digest()).digest()[:KEY_LEN]


def ctr_xor(block, prefix, first, data):
    """data XOR the counter-mode keystream of counter blocks prefix (12 bytes) | counter
    (4 bytes, big-endian) from `first` on; block encrypts a run of whole blocks (ECB)."""
    size = len(data)
    if not size:
        return b""
    count = (size + 15) >> 4
    counters = bytearray(count << 4)
    for i in range(count):
        counters[i << 4 : (i << 4) + 12] = prefix
        struct.pack_into(">I", counters, (i << 4) + 12, (first + i) & 0xFFFFFFFF)
    stream = block(counters)
    # One XOR of two integers instead of a loop over bytes: the interpreter's slow part.
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream[:size], "big")).to_bytes(size, "big")


def cryptolib_block(key):
    """AES-128-ECB from MicroPython's cryptolib (mode 1: ECB)."""
    import cryptolib

    return cryptolib.aes(key, 1).encrypt


class RecordCipher:
    """Encrypts (and, the same operation, decrypts) the payloads of one device's records.

    The keystream of the record (epoch, seq) starts at counter block
    0x01 | key id | 0x0000 | epoch | seq | 0: unique while (epoch, seq) never repeats under
    one key, which the epoch store's write-before-use guarantees (docs/threat-model.md)."""

    def __init__(self, device_key, key_id, block=None):
        self.key_id = key_id
        self._block = (block or cryptolib_block)(encryption_key(device_key))

    def apply(self, epoch, seq, data):
        return ctr_xor(self._block, struct.pack(">BBHII", RECORD, self.key_id, 0, epoch, seq), 0, data)
