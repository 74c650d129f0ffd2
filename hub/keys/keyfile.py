"""The hub key file and per-device keys.

The hub holds one random master secret; each device key is derived from it with
HKDF-SHA256 and the device id and key id in `info` (as OSCORE derives per-sender keys),
so the hub stores no per-device secret. The file is encrypted at rest (hub/keys/keystore.py)
unless the operator explicitly asks for plaintext. Files holding keys are written 0600,
atomically, and refused when group or others can read them.
"""

import base64
import os
import secrets
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent import check_device_id
from agent import frame as wire
from hardware.link_registry import load_links
from hub.core.verifier import DeviceKeys
from hub.keys import keystore
from shared.device_config import (  # noqa: F401  (the hub's key commands use them from here too)
    KeyFileError,
    load_device_config,
    read_private_json,
    write_private_json,
)

FORMAT = "linkseal-hub-keys/1"
MASTER_LEN = 32
DEVICE_KEY_LEN = 32
DEFAULT_GRACE_S = 7 * 86400
HUB_MQTT_USER = "linkseal/hub"  # a '/' keeps Mosquitto's %u ACL patterns from ever matching the hub
CONSUMER_MQTT_USER = "linkseal/consumer"  # reads linkseal/verified/# on the trusted side (broker-config)
FORWARDER_MQTT_USER = "linkseal/forwarder"  # the hub's MQTT sink when it is the device network's broker
_HKDF_SALT = b"linkseal/v1 device key"


def _hkdf(master: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=_HKDF_SALT, info=info).derive(master)


def derive_device_key(master: bytes, device_id: str, key_id: int) -> bytes:
    return _hkdf(master, b"linkseal/v1 device" + bytes((key_id,)) + device_id.encode(), DEVICE_KEY_LEN)


def derive_mqtt_password(master: bytes, username: str) -> str:
    """A broker password per account, derived like the keys, so broker-config can rebuild it."""
    return base64.urlsafe_b64encode(_hkdf(master, b"linkseal/v1 mqtt password" + username.encode(), 24)).decode()


def valid_device_id(device_id: str) -> str:
    """The agent core's device-id check, as an input error (KeyFileError) for the CLI: the core
    raises a plain ValueError, as it runs on MicroPython too."""
    try:
        check_device_id(device_id)
    except ValueError as exc:
        raise KeyFileError(f"{device_id!r}: {exc}") from None
    return device_id


def write_file(path: Path, data, private: bool = False) -> Path:
    """Write text or bytes; private files are 0600 even when they existed with wider modes."""
    mode = 0o600 if private else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as out:
        os.fchmod(out.fileno(), mode)  # O_CREAT's mode only applies to a new file
        out.write(data)
    return Path(path)


class KeyFile:
    """The parsed hub key file. Its repr never shows key material."""

    def __init__(self, path: Path, master: bytes, devices: dict, sealing=None):
        self.path = Path(path)
        self._master = master
        self.devices = devices  # device id -> entry, see provision()
        self._sealing = sealing  # (KDF parameters, file key) when encrypted; None: plaintext

    def __repr__(self):
        kind = self._sealing[0]["name"] if self._sealing else "plaintext"
        return f"KeyFile({str(self.path)!r}, {len(self.devices)} devices, {kind})"

    @property
    def encrypted_with(self) -> str | None:
        """The KDF protecting the file (argon2id or scrypt), None when it is plaintext."""
        return self._sealing[0]["name"] if self._sealing else None

    # -- files ------------------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, passphrase: bytes | None = None) -> "KeyFile":
        """A new key file with a random master secret; plaintext when passphrase is None."""
        path = Path(path)
        if path.exists():
            raise KeyFileError(f"{path}: already exists; refusing to replace a master secret")
        keyfile = cls(path, secrets.token_bytes(MASTER_LEN), {})
        if passphrase is not None:
            keyfile.encrypt(passphrase)
        else:
            keyfile.save()
        return keyfile

    @classmethod
    def load(cls, path: Path, passphrase=None, allow_plaintext: bool = False) -> "KeyFile":
        """passphrase: bytes, or a function returning them, asked only if the file is encrypted."""
        path = Path(path)
        data = read_private_json(path, "key file")
        sealing = None
        if keystore.is_envelope(data):
            if passphrase is None:
                raise KeyFileError(f"{path}: is encrypted and no passphrase was given")
            secret = passphrase() if callable(passphrase) else passphrase
            params = data.get("kdf", {})
            file_key = keystore.derive_file_key(params, secret, path)
            try:
                data = keystore.decrypt_json(data, file_key, path)
            except keystore.KeystoreError as exc:
                raise KeyFileError(str(exc)) from None
            sealing = (params, file_key)
        elif not allow_plaintext:
            raise KeyFileError(f"{path}: is not encrypted; encrypt it with `linkseal keys encrypt --keys {path}` "
                               "or pass --insecure-plaintext")
        return cls(path, *_parse_content(path, data), sealing=sealing)

    def save(self) -> None:
        content = {"format": FORMAT, "master_secret": self._master.hex(), "devices": self.devices}
        if self._sealing:
            content = keystore.encrypt_json(content, *self._sealing)
        write_private_json(self.path, content)

    def encrypt(self, passphrase: bytes) -> None:
        """Encrypt (or re-encrypt) under passphrase, in place and atomically."""
        params = keystore.new_kdf_params()
        self._sealing = (params, keystore.derive_file_key(params, passphrase, self.path))
        self.save()

    # -- devices ----------------------------------------------------------------------

    def provision(self, device_id: str, link: str, tag_len: int | None = None, key_id: int = 0, save: bool = True,
                  form: str | None = None, region: str | None = None, data_rate: str | None = None,
                  dev_eui: str | None = None, encrypt: bool = False) -> dict:
        """Register a device (or update its link and minimum tag); return its device config.

        form: "compact" (agent/frame.py; 8-byte tag), the default on links whose own check drops
        damaged frames (hardware/links: compact_frames, LoRaWAN), which alone allow it; else
        "full" (16-byte tag).
        region, data_rate: for a link with payload limits (LoRaWAN), checked for a compact
        device or when given (default: the first region at its smallest data rate), refused
        when a frame with one byte of record would not fit. save=False defers writing the key
        file (call save() after). encrypt: the device encrypts its records (agent/cipher.py),
        and the hub refuses its records in clear.
        """
        valid_device_id(device_id)
        links = load_links()
        if link not in links:
            raise KeyFileError(f"unknown link {link!r}; known: {', '.join(sorted(links))}")
        form = form or ("compact" if links[link].compact_frames else "full")
        if form not in ("full", "compact"):
            raise KeyFileError(f"form must be full or compact, not {form!r}")
        if form == "compact" and not links[link].compact_frames:
            raise KeyFileError(f"{link}: its link layer does not drop damaged frames, so its frames need the CRC "
                               "of the full form (hardware/links: compact_frames)")
        tag_len = tag_len or (8 if form == "compact" else 16)
        try:
            wire.tag_code(tag_len)
        except ValueError as exc:  # the agent core's check (plain ValueError: it runs on MicroPython)
            raise KeyFileError(f"{device_id!r}: {exc}") from None
        if not 0 <= key_id <= 255:
            raise KeyFileError("key id must be 0..255")
        entry = {"link": link, "tag_len": tag_len, "key_id": key_id, "state": "active",
                 "previous": self.devices.get(device_id, {}).get("previous", [])}
        if form == "compact":
            entry["form"] = "compact"
        if encrypt:
            entry["encrypt"] = True
        limits = links[link].payload_limits
        if limits and (region or data_rate or form == "compact"):
            entry["region"] = region or next(iter(limits))  # the firmware's payload per data rate
            entry["max_frame"] = _largest_frame(link, limits, entry["region"], data_rate, form, tag_len)
        elif region or data_rate:
            raise KeyFileError(f"{link}: no regions or data rates (only LoRaWAN links have them)")
        if dev_eui is not None:  # how a LoRaWAN network server names the device (hub run --lorawan)
            entry["dev_eui"] = _dev_eui(dev_eui)
            owner = next((d for d, e in self.devices.items() if e.get("dev_eui") == entry["dev_eui"]), device_id)
            if owner != device_id:
                raise KeyFileError(f"DevEUI {entry['dev_eui']} is {owner}'s already")
        self.devices[device_id] = entry
        if save:
            self.save()
        return self.device_config(device_id)

    def device_config(self, device_id: str) -> dict:
        """What the device needs (written 0600 by the CLI): its key and broker credentials."""
        entry = self._entry(device_id)
        return {
            "device_id": device_id,
            "key": derive_device_key(self._master, device_id, entry["key_id"]).hex(),
            "key_id": entry["key_id"],
            "link": entry["link"],
            "tag_len": entry["tag_len"],
            "form": entry.get("form", "full"),
            **{field: entry[field] for field in ("max_frame", "region", "encrypt") if field in entry},
            "mqtt_username": device_id,
            "mqtt_password": derive_mqtt_password(self._master, device_id),
        }

    def rotate(self, device_id: str, grace_s: float = DEFAULT_GRACE_S, now: float | None = None) -> dict:
        """A new key id for the device; the old one is accepted for grace_s, then retired."""
        entry = self._entry(device_id)
        now = time.time() if now is None else now
        used = {entry["key_id"]} | {p["key_id"] for p in entry["previous"]}
        new_id = next((k % 256 for k in range(entry["key_id"] + 1, entry["key_id"] + 257) if k % 256 not in used),
                      None)
        if new_id is None:
            raise KeyFileError(f"device {device_id}: all 256 key ids have been used; provision a new device id")
        entry["previous"].append({"key_id": entry["key_id"], "accept_until": now + grace_s})
        entry["key_id"] = new_id
        self.save()
        return self.device_config(device_id)

    def revoke(self, device_id: str, now: float | None = None) -> None:
        entry = self._entry(device_id)
        entry["state"] = "revoked"
        entry["revoked_at"] = time.time() if now is None else now
        self.save()

    def mqtt_password(self, username: str) -> str:
        return derive_mqtt_password(self._master, username)

    def seal_key(self) -> bytes:
        """The key of the hub store's seals (hub/service/storage/seals.py): derived, never stored apart."""
        return _hkdf(self._master, b"linkseal/v1 seal key", 32)

    def _entry(self, device_id: str) -> dict:
        if device_id not in self.devices:
            raise KeyFileError(f"device {device_id!r} is not in {self.path}")
        return self.devices[device_id]

    def devices_by_eui(self) -> dict:
        """DevEUI -> device id, for the devices provisioned with one (LoRaWAN)."""
        return {e["dev_eui"]: d for d, e in self.devices.items() if "dev_eui" in e}

    def device_keys(self) -> list[DeviceKeys]:
        """What the verifier needs: derived keys, home link, minimum tag, previous keys, state."""
        specs = []
        for device_id, e in self.devices.items():
            ids = [e["key_id"]] + [p["key_id"] for p in e["previous"]]
            keys = {kid: derive_device_key(self._master, device_id, kid) for kid in ids}
            until = {p["key_id"]: p["accept_until"] for p in e["previous"]}
            specs.append(DeviceKeys(device_id, keys, e["link"], e["tag_len"], current=e["key_id"],
                                    accept_until=until, revoked=e["state"] == "revoked",
                                    compact=e.get("form") == "compact", encrypt=e.get("encrypt", False)))
        return specs


def _parse_content(path: Path, data: dict) -> tuple[bytes, dict]:
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
            entry.setdefault("state", "active")
            entry.setdefault("previous", [])
            for kid in [entry["key_id"]] + [p["key_id"] for p in entry["previous"]]:
                if not 0 <= kid <= 255:
                    raise ValueError("key ids must be 0..255")
            if entry["state"] not in ("active", "revoked"):
                raise ValueError(f"unknown state {entry['state']!r}")
            if entry.get("form", "full") not in ("full", "compact"):
                raise ValueError(f"unknown form {entry['form']!r}")
            if not isinstance(entry.get("encrypt", False), bool):
                raise ValueError("encrypt must be true or false")
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyFileError(f"{path}: device {device_id!r}: {exc}") from None
    return master, devices


def _dev_eui(text: str) -> str:
    eui = text.replace(":", "").replace("-", "").lower()
    if len(eui) != 16 or any(c not in "0123456789abcdef" for c in eui):
        raise KeyFileError(f"DevEUI {text!r}: expected 16 hex digits (8 bytes)")
    return eui


def frame_overhead(form: str, tag_len: int) -> int:
    """A frame's bytes beside its record for epochs below 128 and sequence numbers below 16,384
    (one- and two-byte varints): the header, the tag and, in the full form, the CRC."""
    header = (2 if form == "compact" else wire.FIXED_HEADER_LEN) + 1 + 2
    return header + tag_len + (0 if form == "compact" else wire.CRC_LEN)


def _largest_frame(link, limits, region, data_rate, form, tag_len) -> int:
    """The payload limit of the region and data rate, checked to carry a frame of one byte."""
    if region not in limits:
        raise KeyFileError(f"{link}: unknown region {region!r}; known: {', '.join(limits)}")
    rates = limits[region]
    data_rate = data_rate or min(rates, key=rates.get)
    if data_rate not in rates:
        raise KeyFileError(f"{link} {region}: unknown data rate {data_rate!r}; known: {', '.join(rates)}")
    need = frame_overhead(form, tag_len) + 1
    if rates[data_rate] < need:
        raise KeyFileError(f"{link} {region} {data_rate}: an uplink carries {rates[data_rate]} bytes, a {form} frame "
                           f"with a {tag_len}-byte tag and one byte of record needs {need}: pick a faster data rate")
    return rates[data_rate]
