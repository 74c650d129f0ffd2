"""Broker URLs and credentials, and durations: what the hub, the Linux agent and the firmware
build all read from their users (hub.toml, device configs and command lines)."""

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

_DURATION = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class ConfigError(ValueError):
    """A setting that cannot work; the message names the setting and the file."""


@dataclass
class Broker:
    host: str
    port: int
    tls: bool
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never printed


def parse_duration(text: str, where: str) -> float:
    """"90s", "15m", "2h", "7d" (or, in hub.toml, a plain number of seconds) in seconds;
    ConfigError naming `where` otherwise."""
    if isinstance(text, int) and not isinstance(text, bool) and 0 <= text < 10**9:
        return float(text)
    match = re.fullmatch(r"(\d{1,9})([smhd])", text if isinstance(text, str) else "")
    if not match:
        raise ConfigError(f"{where} {text!r}: expected a number and a unit, like 90s, 15m, 2h or 7d")
    return int(match[1]) * _DURATION[match[2]]


def parse_broker(url: str, ca_file=None, cert_file=None, key_file=None, username=None, password_file=None,
                 option: str = "--broker", password_from_environment: bool = True) -> Broker:
    """The hub's (or the agent's) broker; for a sink, option names it and the environment's
    password (the hub's own, for the device network's broker) is never used."""
    try:
        parts = urlsplit(url)
    except ValueError:  # an unclosed IPv6 literal: mqtt://[::1
        parts = None
    if parts is None or parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(f"{option} {url!r}: expected mqtt://HOST:PORT or mqtts://HOST:PORT")
    if parts.username or parts.password:
        where = ("--username and the password in LINKSEAL_MQTT_PASSWORD or --password-file"
                 if password_from_environment else "username and password_file of its hub.toml [[forward]] table")
        raise ConfigError(f"{option}: put the user name in {where}, not in the URL")
    try:
        port = parts.port if parts.port is not None else (8883 if parts.scheme == "mqtts" else 1883)
        if port == 0:
            raise ValueError(port)
    except ValueError:
        raise ConfigError(f"{option} {url!r}: the port is not a number in 1..65535") from None
    tls = parts.scheme == "mqtts"
    if not tls and (ca_file or cert_file or key_file):
        raise ConfigError("--ca-file, --cert-file and --key-file need an mqtts:// broker")
    if bool(cert_file) != bool(key_file):
        raise ConfigError("--cert-file and --key-file go together (mutual TLS)")
    for option, path in (("--ca-file", ca_file), ("--cert-file", cert_file), ("--key-file", key_file)):
        if path and not Path(path).is_file():
            raise ConfigError(f"{option} {path}: no such file")
    password = os.environ.get("LINKSEAL_MQTT_PASSWORD") if password_from_environment else None
    if password_file:
        try:
            password = Path(password_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"--password-file {password_file}: {exc.strerror}") from None
    return Broker(parts.hostname, port, tls, ca_file, cert_file, key_file, username, password)
