"""AES-128-ECB on a host (`cryptography`), as the block function of agent/cipher.py's counter
mode: the Linux agent seals with it and the hub opens with it, through the same code a board
runs on cryptolib."""

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


def ecb_block(key: bytes):
    """A function that encrypts a run of whole 16-byte blocks under key: one update() each
    (ECB keeps no state between blocks, so one encryptor serves every frame)."""
    return Cipher(algorithms.AES(key), modes.ECB()).encryptor().update
