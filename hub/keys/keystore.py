"""Key files at rest: passphrase -> Argon2id (scrypt where unavailable) -> AES-256-GCM.

The envelope is JSON: a header (format, KDF and its parameters, cipher, nonce) and the
ciphertext. The header is authenticated as associated data, so changing the recorded KDF
parameters makes decryption fail instead of silently weakening the file.
"""

import base64
import json
import os
import secrets
import sys
from pathlib import Path

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

ENVELOPE_FORMAT = "linkseal-keystore/1"
# RFC 9106's second recommended option: t=3, p=4, m=64 MiB (about 0.1 s here).
ARGON2ID = {"name": "argon2id", "iterations": 3, "lanes": 4, "memory_cost": 65536}
SCRYPT = {"name": "scrypt", "n": 2**17, "r": 8, "p": 1}
PASSPHRASE_FILE_ENV = "LINKSEAL_PASSPHRASE_FILE"
PASSPHRASE_ENV = "LINKSEAL_PASSPHRASE"


class KeystoreError(ValueError):
    """The file cannot be opened: wrong passphrase, damaged, unsafe permissions. Names the file."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _kdf(params: dict, salt: bytes):
    if params["name"] == "argon2id":
        from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

        return Argon2id(salt=salt, length=32, iterations=params["iterations"], lanes=params["lanes"],
                        memory_cost=params["memory_cost"])
    if params["name"] == "scrypt":
        return Scrypt(salt=salt, length=32, n=params["n"], r=params["r"], p=params["p"])
    raise KeystoreError(f"unknown key derivation {params['name']!r}")


def default_kdf() -> dict:
    """Argon2id when this cryptography/OpenSSL has it (>= 44 with OpenSSL >= 3.2), else scrypt."""
    try:
        from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

        Argon2id(salt=b"\0" * 16, length=32, iterations=1, lanes=1, memory_cost=8).derive(b"probe")
        return dict(ARGON2ID)
    except (ImportError, UnsupportedAlgorithm):
        return dict(SCRYPT)


def is_envelope(data: dict) -> bool:
    return isinstance(data, dict) and data.get("format") == ENVELOPE_FORMAT


def new_kdf_params() -> dict:
    """KDF parameters with a fresh salt, for a file encrypted under a new passphrase."""
    return {**default_kdf(), "salt": _b64(secrets.token_bytes(16))}


def derive_file_key(params: dict, passphrase: bytes, path: Path) -> bytes:
    try:
        return _kdf(params, base64.b64decode(params["salt"])).derive(passphrase)
    except (KeyError, TypeError, ValueError, UnsupportedAlgorithm) as exc:
        raise KeystoreError(f"{path}: damaged key file header ({type(exc).__name__})") from None


def encrypt_json(content: dict, params: dict, file_key: bytes) -> dict:
    """The envelope to write: content encrypted under the key derived with params."""
    header = {"format": ENVELOPE_FORMAT, "kdf": params, "cipher": "AES-256-GCM",
              "nonce": _b64(secrets.token_bytes(12))}  # fresh for every write
    plaintext = json.dumps(content, sort_keys=True).encode()
    ciphertext = AESGCM(file_key).encrypt(base64.b64decode(header["nonce"]), plaintext, _aad(header))
    return {**header, "ciphertext": _b64(ciphertext)}


def decrypt_json(envelope: dict, file_key: bytes, path: Path) -> dict:
    header = {k: v for k, v in envelope.items() if k != "ciphertext"}
    try:
        plaintext = AESGCM(file_key).decrypt(base64.b64decode(header["nonce"]),
                                             base64.b64decode(envelope["ciphertext"]), _aad(header))
    except InvalidTag:
        raise KeystoreError(f"{path}: wrong passphrase, or the file was changed") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise KeystoreError(f"{path}: damaged key file ({type(exc).__name__})") from None
    return json.loads(plaintext)


def _aad(header: dict) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def passphrase_from_environment(confirm: bool = False) -> bytes:
    """LINKSEAL_PASSPHRASE_FILE, else LINKSEAL_PASSPHRASE, else a prompt on a terminal."""
    path = os.environ.get(PASSPHRASE_FILE_ENV)
    if path:
        try:
            value = Path(path).read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise KeystoreError(f"{PASSPHRASE_FILE_ENV}={path}: {exc.strerror}") from None
    elif os.environ.get(PASSPHRASE_ENV):
        value = os.environ[PASSPHRASE_ENV].encode()
    elif sys.stdin.isatty():
        import getpass

        value = getpass.getpass("key file passphrase: ").encode()
        if confirm and getpass.getpass("again: ").encode() != value:
            raise KeystoreError("the two passphrases differ")
    else:
        raise KeystoreError(f"no passphrase: set {PASSPHRASE_FILE_ENV} (a file holding it) or {PASSPHRASE_ENV}, "
                            "or run on a terminal; to use an unencrypted key file pass --insecure-plaintext")
    if not value:
        raise KeystoreError("the passphrase is empty")
    return value
