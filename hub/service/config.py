"""`linkseal hub run` settings: the broker URL and credentials, and hub.toml."""

import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from hub.core.behaviour import DEFAULT_RULES, parse_rules
from hub.core.watch import DEFAULT_HEARTBEAT_S, WINDOW_S
from hub.service.storage.sqlite import Retention
from shared.settings import Broker, ConfigError, parse_broker, parse_duration  # noqa: F401  (hub.toml uses them)

DEFAULT_RATE = (100.0, 1000.0)  # frames per second and burst per device: generous on purpose
DEFAULT_MAX_BACKLOG = 10_000_000  # undelivered records per sink before upstream acks pause (a few GB)
FORWARD_OPTIONS = ("ca_file", "cert_file", "key_file", "username", "password_file")  # [[forward]], beside url
_FORWARD_KEYS = ("url", *FORWARD_OPTIONS)


@dataclass
class HubSettings:
    client_id: str = "linkseal-hub"
    keepalive: int = 30
    queue_size: int = 10000
    batch_size: int = 500
    backoff_max: float = 30.0
    report_interval: float = 60.0  # how often rate-limit summaries and link health are logged
    rate_limits: dict = field(default_factory=dict)  # link name -> (rate, burst)
    require_encryption: list = field(default_factory=list)  # [policy]: link types that refuse records in clear
    log_json: bool = False
    forwards: list = field(default_factory=list)  # [[forward]] tables: url, ca_file, username ...
    lorawan: list = field(default_factory=list)  # [[lorawan]] tables: url, ca_file, username, password_file
    max_backlog: int = DEFAULT_MAX_BACKLOG
    prune_interval: float = 10.0  # seconds between retention steps in `hub run`
    retention: Retention = field(default_factory=Retention)
    # [console]: the operator console of `hub run` (the --console options win)
    console_listen: str = ""
    console_token_file: str = ""
    console_tls_cert: str = ""
    console_tls_key: str = ""
    # [watch] and [[behaviour]]: liveness and behaviour (hub/core/watch.py, docs/behaviour.md)
    window_s: float = WINDOW_S
    heartbeat_s: dict = field(default_factory=lambda: dict(DEFAULT_HEARTBEAT_S))  # link -> assumed period
    behaviours: tuple = DEFAULT_RULES

    def watch_options(self) -> dict:
        """Watch(...)'s keyword arguments."""
        return {"rules": self.behaviours, "window_s": self.window_s, "heartbeat_s": self.heartbeat_s}



# (TOML section, key, HubSettings attribute)
_SETTINGS = (("mqtt", "client_id", "client_id"), ("mqtt", "keepalive", "keepalive"),
             ("mqtt", "backoff_max", "backoff_max"), ("ingest", "queue_size", "queue_size"),
             ("ingest", "batch_size", "batch_size"), ("ingest", "report_interval", "report_interval"),
             ("log", "json", "log_json"), ("outbox", "max_backlog", "max_backlog"),
             ("outbox", "prune_interval", "prune_interval"), ("console", "listen", "console_listen"),
             ("console", "token_file", "console_token_file"), ("console", "tls_cert", "console_tls_cert"),
             ("console", "tls_key", "console_tls_key"))


# Upper bounds the protocol sets: MQTT's keepalive is a 16-bit number of seconds.
_LIMITS = {"keepalive": (65535, "MQTT keeps it in 16 bits")}
_SECTIONS = {section for section, _, _ in _SETTINGS} | {"rate_limits", "forward", "retention", "lorawan", "policy",
                                                      "watch", "behaviour"}


def _refuse_unknown_keys(path, data) -> None:
    """A misspelt section or key would otherwise be ignored silently, leaving the default."""
    for section, table in data.items():
        if section not in _SECTIONS:
            raise ConfigError(f"{path}: [{section}]: not a hub.toml section (expected one of "
                              f"{', '.join(sorted(_SECTIONS))})")
        if section not in ("forward", "lorawan", "behaviour") and not isinstance(table, dict):
            raise ConfigError(f"{path}: {section} must be a table ([{section}]), not a value")
        known = {key for s, key, _ in _SETTINGS if s == section}
        if known and isinstance(table, dict):
            for key in table:
                if key not in known:
                    raise ConfigError(f"{path}: [{section}] {key}: not a setting of [{section}] (expected one of "
                                      f"{', '.join(sorted(known))})")


def load_settings(path: Path | None, known_links) -> HubSettings:
    settings = HubSettings()
    settings.rate_limits = {name: DEFAULT_RATE for name in known_links}
    if path is None:
        return settings
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    _refuse_unknown_keys(path, data)
    for section, key, attribute in _SETTINGS:
        if key not in data.get(section, {}):
            continue
        value, default = data[section][key], getattr(settings, attribute)
        if type(value) is not type(default) and not (isinstance(default, float) and type(value) is int):
            kind = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[type(default)]
            raise ConfigError(f"{path}: [{section}] {key} must be {kind}")
        if type(value) in (int, float) and not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{path}: [{section}] {key} must be a positive finite number")
        if key in _LIMITS and value > _LIMITS[key][0]:
            raise ConfigError(f"{path}: [{section}] {key} must be at most {_LIMITS[key][0]} ({_LIMITS[key][1]})")
        if type(value) is str and not value and key == "client_id":
            raise ConfigError(f"{path}: [{section}] {key} must not be empty (the broker keeps the hub's session under it)")
        setattr(settings, attribute, value)
    limits = data.get("rate_limits", {})
    default = limits.get("default")
    for name in list(limits):
        if name != "default" and name not in known_links:
            raise ConfigError(f"{path}: [rate_limits] {name}: not a link type in hardware/links")
    for name in known_links:
        spec = limits.get(name, default)
        if spec is None:
            continue
        try:
            rate, burst = float(spec["rate"]), float(spec["burst"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{path}: [rate_limits] {name if name in limits else 'default'} needs numbers "
                              "`rate` (frames per second) and `burst`") from None
        if not (math.isfinite(rate) and math.isfinite(burst) and rate > 0 and burst >= 1):
            raise ConfigError(f"{path}: [rate_limits] {name}: rate must be a finite number > 0 and burst >= 1")
        settings.rate_limits[name] = (rate, burst)
    settings.require_encryption = _required_encryption(path, data.get("policy", {}), known_links)
    settings.forwards = _url_tables(path, data.get("forward", []))
    settings.lorawan = _url_tables(path, data.get("lorawan", []), "lorawan", ("url", "ca_file", "username",
                                                                            "password_file"))
    settings.retention = _retention(path, data.get("retention", {}))
    _watch(path, data, known_links, settings)
    return settings


def _watch(path, data, known_links, settings) -> None:
    """[watch] window_s, default_behaviours, [watch.heartbeat_s]; [[behaviour]] tables (added to the
    default rules, a rule of a default's name replacing it, or alone with default_behaviours = false)."""
    table = data.get("watch", {})
    unknown = set(table) - {"window_s", "default_behaviours", "heartbeat_s"}
    if unknown:
        raise ConfigError(f"{path}: [watch] {sorted(unknown)[0]}: not a setting of [watch] (expected window_s, "
                          "default_behaviours or a [watch.heartbeat_s] table)")
    window = table.get("window_s", settings.window_s)
    if isinstance(window, bool) or not isinstance(window, (int, float)) or not 10 <= window <= 86400:
        raise ConfigError(f"{path}: [watch] window_s must be seconds from 10 to 86400")
    settings.window_s = float(window)
    periods = table.get("heartbeat_s", {})
    if not isinstance(periods, dict):
        raise ConfigError(f"{path}: [watch] heartbeat_s must be a table of link type = seconds")
    for name, seconds in periods.items():
        if name != "default" and name not in known_links:
            raise ConfigError(f"{path}: [watch.heartbeat_s] {name}: not a link type in hardware/links (or default)")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 1 <= seconds <= 7 * 86400:
            raise ConfigError(f"{path}: [watch.heartbeat_s] {name} must be seconds from 1 to 604800")
        settings.heartbeat_s[name] = float(seconds)
    keep = table.get("default_behaviours", True)
    if not isinstance(keep, bool):
        raise ConfigError(f"{path}: [watch] default_behaviours must be true or false")
    try:
        rules = parse_rules(data.get("behaviour", []), str(path))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    named = {rule.name for rule in rules}
    settings.behaviours = tuple(rule for rule in DEFAULT_RULES if keep and rule.name not in named) + rules


def _required_encryption(path, policy: dict, known_links) -> list:
    """[policy] require_encryption: link types on which the hub refuses records in clear."""
    unknown = [key for key in policy if key != "require_encryption"]
    if unknown:
        raise ConfigError(f"{path}: [policy] {unknown[0]}: not a setting of [policy] (expected require_encryption)")
    names = policy.get("require_encryption", [])
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ConfigError(f"{path}: [policy] require_encryption must be a list of link types, "
                          'e.g. ["wifi", "ble", "lora"]')
    for name in names:
        if name not in known_links:
            raise ConfigError(f"{path}: [policy] require_encryption: {name!r} is not a link type in hardware/links "
                              f"({', '.join(sorted(known_links))})")
    return names


def _url_tables(path, tables, section="forward", keys=None) -> list:
    """[[forward]] or [[lorawan]] tables: each a url and only the keys it may take."""
    keys = keys or _FORWARD_KEYS
    if not isinstance(tables, list) or not all(isinstance(table, dict) for table in tables):
        raise ConfigError(f"{path}: {section} must be [[{section}]] tables")
    for number, table in enumerate(tables, start=1):
        unknown = set(table) - set(keys)
        if unknown or not isinstance(table.get("url"), str):
            raise ConfigError(f"{path}: [[{section}]] number {number} needs url (a string) and takes only "
                              f"{', '.join(keys)}" + (f"; not {', '.join(sorted(unknown))}" if unknown else ""))
    return [dict(table) for table in tables]


LORAWAN_SCHEMES = {"chirpstack+mqtt": "chirpstack", "chirpstack+mqtts": "chirpstack", "ttn+mqtt": "ttn",
                   "ttn+mqtts": "ttn"}


def parse_lorawan(url: str, ca_file=None, username=None, password_file=None) -> tuple[str, Broker]:
    """(server, its broker) for --lorawan chirpstack+mqtt[s]://HOST:PORT or ttn+mqtt[s]://HOST:PORT."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in LORAWAN_SCHEMES:
        raise ConfigError(f"--lorawan {url!r}: expected chirpstack+mqtt://, chirpstack+mqtts://, ttn+mqtt:// or "
                          "ttn+mqtts:// and HOST:PORT")
    broker = parse_broker(scheme.split("+")[1] + "://" + rest, ca_file, None, None, username, password_file,
                          option="--lorawan", password_from_environment=False)
    return LORAWAN_SCHEMES[scheme], broker


def _retention(path, table) -> Retention:
    values = {}
    for item in fields(Retention):
        if item.name in table:
            values[item.name] = parse_duration(table[item.name], f"{path}: [retention] {item.name}")
    unknown = set(table) - set(values)
    if unknown:
        raise ConfigError(f"{path}: [retention] {', '.join(sorted(unknown))}: not a retention setting "
                          f"({', '.join(item.name for item in fields(Retention))})")
    return Retention(**values)
