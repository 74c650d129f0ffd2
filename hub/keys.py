"""The hub key file and per-device keys.

The hub holds one random master secret; each device key is derived from it with
HKDF-SHA256 and the device id and key id in `info` (as OSCORE derives per-sender keys),
so the hub stores no per-device secret. Files holding keys are written 0600, atomically.
"""

import json
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent import check_device_id
from agent import frame as wire

from .link_registry import load_links
from .verifier import DeviceKeys

FORMAT = "linkseal-hub-keys/1"
MASTER_LEN = 32
DEVICE_KEY_LEN = 32
_HKDF_SALT = b"linkseal/v1 device key"


class KeyFileError(ValueError):
    """A key file or device config that cannot be used; the message names the file."""


def derive_device_key(master: bytes, device_id: str, key_id: int) -> bytes:
    info = b"linkseal/v1 device" + bytes((key_id,)) + device_id.encode()
    return HKDF(algorithm=hashes.SHA256(), length=DEVICE_KEY_LEN, salt=_HKDF_SALT, info=info).derive(master)


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


class KeyFile:
    """The parsed hub key file. Its repr never shows the master secret."""

    def __init__(self, path: Path, master: bytes, devices: dict):
        self.path = Path(path)
        self._master = master
        self.devices = devices  # device id -> {"link", "tag_len", "key_id"}

    def __repr__(self):
        return f"KeyFile({str(self.path)!r}, {len(self.devices)} devices)"

    @classmethod
    def create(cls, path: Path) -> "KeyFile":
        path = Path(path)
        if path.exists():
            raise KeyFileError(f"{path}: already exists; refusing to replace a master secret")
        keyfile = cls(path, secrets.token_bytes(MASTER_LEN), {})
        keyfile.save()
        return keyfile

    @classmethod
    def load(cls, path: Path) -> "KeyFile":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise KeyFileError(f"{path}: no such key file (create one with `linkseal keys init`)") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyFileError(f"{path}: cannot read: {exc.strerror if isinstance(exc, OSError) else exc}") from None
        except json.JSONDecodeError as exc:
            raise KeyFileError(f"{path}: not JSON (line {exc.lineno})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise KeyFileError(f"{path}: not a linkseal hub key file (format {FORMAT!r} expected)")
        try:
            master = bytes.fromhex(data["master_secret"])
        except (KeyError, TypeError, ValueError):
            raise KeyFileError(f"{path}: master_secret is missing or not hex") from None
        if len(master) != MASTER_LEN:
            raise KeyFileError(f"{path}: master_secret must be {MASTER_LEN} bytes")
        devices = data.get("devices", {})
        links = load_links()
        for device_id, entry in devices.items():
            try:
                check_device_id(device_id)
                if entry["link"] not in links:
                    raise ValueError(f"unknown link {entry['link']!r}")
                wire.tag_code(entry["tag_len"])
                if not 0 <= entry["key_id"] <= 255:
                    raise ValueError("key_id must be 0..255")
            except (KeyError, TypeError, ValueError) as exc:
                raise KeyFileError(f"{path}: device {device_id!r}: {exc}") from None
        return cls(path, master, devices)

    def save(self) -> None:
        write_private_json(self.path, {"format": FORMAT, "master_secret": self._master.hex(), "devices": self.devices})

    def provision(self, device_id: str, link: str, tag_len: int = 16, key_id: int = 0, save: bool = True) -> dict:
        """Register a device (or update its link and minimum tag); return its device config.

        save=False defers writing the key file (many devices at once: call save() after).
        """
        check_device_id(device_id)
        if link not in load_links():
            raise ValueError(f"unknown link {link!r}; known: {', '.join(sorted(load_links()))}")
        wire.tag_code(tag_len)
        if not 0 <= key_id <= 255:
            raise ValueError("key id must be 0..255")
        self.devices[device_id] = {"link": link, "tag_len": tag_len, "key_id": key_id}
        if save:
            self.save()
        return {
            "device_id": device_id,
            "key": derive_device_key(self._master, device_id, key_id).hex(),
            "key_id": key_id,
            "link": link,
            "tag_len": tag_len,
        }

    def device_keys(self) -> list[DeviceKeys]:
        """What the verifier needs: derived keys, home link and minimum tag per device."""
        return [
            DeviceKeys(device_id, {e["key_id"]: derive_device_key(self._master, device_id, e["key_id"])},
                       e["link"], e["tag_len"])
            for device_id, e in self.devices.items()
        ]


DEVICE_FIELDS = {"device_id": str, "key": str, "key_id": int, "link": str, "tag_len": int}


def load_device_config(path: Path) -> dict:
    """A device config written by `keys provision`, checked field by field."""
    path = Path(path)
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such device config") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise KeyFileError(f"{path}: not a JSON device config") from None
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
    return config
