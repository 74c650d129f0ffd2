"""Decrypting authentic records at the hub: the construction of agent/cipher.py, with
`cryptography`'s AES-CTR doing the counter mode in C.

One context per device key, made once; each record resets its nonce to the record's first
counter block (0x01 | key id | 0x0000 | epoch | seq | 0) and costs one update(). OpenSSL
increments the whole 128-bit block where the protocol increments its last 32 bits: the same
blocks for any payload under 2^32 blocks (64 GiB), far beyond any frame.
tests/test_encryption.py opens here what the agent's own counter mode sealed on CPython and
on MicroPython (which is checked against SP 800-38A F.5.1)."""

import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from agent.cipher import encryption_key

first_block = struct.Struct(">BBHIII").pack  # 0x01, key id, 0, epoch, seq, block counter 0


def open_records(device_key: bytes) -> tuple:
    """(reset_nonce, update) of one AES-CTR context under the device key's encryption key: a
    record is reset_nonce(first_block(1, key id, 0, epoch, seq, 0)), then update(ciphertext)."""
    context = Cipher(algorithms.AES(encryption_key(device_key)), modes.CTR(bytes(16))).decryptor()
    return context.reset_nonce, context.update
