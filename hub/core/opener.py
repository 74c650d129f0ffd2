"""Decrypting authentic records at the hub: the construction of agent/cipher.py, with
`cryptography`'s AES-CTR doing the counter mode in C.

One context per device key, made once; each record resets its nonce to the record's first
counter block (0x01 | key id | 0x0000 | epoch | seq | 0) and costs one update(). OpenSSL
increments the whole 128-bit block where the protocol increments its last 32 bits: the same
blocks for any payload under 2^32 blocks (64 GiB), far beyond any frame.
tests/test_encryption.py checks both against each other and against SP 800-38A."""

import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from agent.cipher import encryption_key

_FIRST_BLOCK = struct.Struct(">BBHIII")


class RecordOpener:
    __slots__ = ("key_id", "_context")

    def __init__(self, device_key: bytes, key_id: int):
        self.key_id = key_id
        self._context = Cipher(algorithms.AES(encryption_key(device_key)), modes.CTR(bytes(16))).decryptor()

    def apply(self, epoch: int, seq: int, data: bytes) -> bytes:
        context = self._context
        context.reset_nonce(_FIRST_BLOCK.pack(1, self.key_id, 0, epoch, seq, 0))
        return context.update(data)
