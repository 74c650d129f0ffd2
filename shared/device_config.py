"""Device configs (`keys provision` writes them, the Linux agent and the firmware build read
them) and the owner-only JSON files they and the hub's key file are."""

import json
import os
import secrets
import stat
from pathlib import Path


class KeyFileError(ValueError):
    """A key file or device config that cannot be used; the message names the file."""


def write_private_json(path: Path, data: dict) -> None:
    """Write JSON readable by the owner only; a crash leaves the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=2, sort_keys=True)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_private(path: Path) -> None:
    """Refuse a secret file that group or others can read, as ssh does with private keys."""
    mode = stat.S_IMODE(Path(path).stat().st_mode)
    if mode & 0o077:
        raise KeyFileError(f"{path}: permissions {mode:04o} let other users read a secret; "
                            f"run `chmod 600 {path}` and try again")


def read_private_json(path: Path, what: str) -> dict:
    if path.is_dir():  # before the permission check, which would ask to chmod the directory
        raise KeyFileError(f"{path}: is a directory, not a {what}")
    try:
        data = json.loads(path.read_text())  # first what it is: /etc/passwd is no key file, whatever its mode
        if not isinstance(data, dict):
            raise json.JSONDecodeError("not an object", "", 0)
        check_private(path)
        return data
    except FileNotFoundError:
        hint = " (create one with `linkseal keys init`)" if what == "key file" else ""
        raise KeyFileError(f"{path}: no such {what}{hint}") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise KeyFileError(f"{path}: not a {what} (not the JSON linkseal writes)") from None


DEVICE_FIELDS = {"device_id": str, "key": str, "key_id": int, "link": str, "tag_len": int}


def load_device_config(path: Path) -> dict:
    """A device config written by `keys provision`, checked field by field."""
    path = Path(path)
    config = read_private_json(path, "device config")
    if not isinstance(config, dict):
        raise KeyFileError(f"{path}: not a JSON device config")
    for field, kind in DEVICE_FIELDS.items():
        if not isinstance(config.get(field), kind) or isinstance(config.get(field), bool):
            raise KeyFileError(f"{path}: field {field!r} is missing or not a {kind.__name__}")
    try:
        key = bytes.fromhex(config["key"])
    except ValueError:
        raise KeyFileError(f"{path}: field 'key' is not hex") from None
    if len(key) < 16:
        raise KeyFileError(f"{path}: field 'key' is shorter than 16 bytes")
    if not isinstance(config.get("encrypt", False), bool):
        raise KeyFileError(f"{path}: field 'encrypt' is not true or false")
    return config
