"""Uplink events of LoRaWAN network servers, read: what their MQTT integrations publish.

Sans-I/O: (topic, payload bytes) in, an Uplink or the reason it is not one out.

- ChirpStack v4: `application/<application id>/device/<devEui>/event/up`, the protobuf JSON
  mapping of `integration.UplinkEvent` (fields equal to 0 left out: an `fCnt` of 0 is
  absent), or the binary protobuf when the server runs with `json=false`. Read through the
  `chirpstack-api` classes, unknown fields ignored. Other events (`log`, `join`, ...) never
  carry records and are not subscribed to.
- The Things Stack v3: `v3/<application id>@<tenant>/devices/<device id>/up`, JSON
  (`end_device_ids.dev_eui`, `uplink_message.f_cnt`, `frm_payload`, `rx_metadata[]`,
  `settings.data_rate.lora.spreading_factor`).

The record frame is the uplink's application payload, sealed on the device; the network
server can see and drop it, not forge or replay it undetected.
"""

import base64
import binascii
import json
from typing import NamedTuple

CHIRPSTACK, TTN = "chirpstack", "ttn"
TOPICS = {CHIRPSTACK: "application/+/device/+/event/up", TTN: "v3/+/devices/+/up"}


class Uplink(NamedTuple):
    """One uplink: dev_eui (16 lower-case hex digits), data (the frame), f_cnt, f_port, gateways
    [(gateway id, rssi, snr)], spreading_factor and frequency (Hz), or None when absent;
    dev_addr: the session's device address (a join gives a new one), or None."""

    dev_eui: str
    data: bytes
    f_cnt: int
    f_port: int
    gateways: list
    spreading_factor: int | None
    frequency: int | None
    dev_addr: str | None = None


class NotAnUplink(ValueError):
    """The message is not a readable uplink. dev_eui: the device it names, when it names one."""

    def __init__(self, reason: str, dev_eui: str | None = None):
        super().__init__(reason)
        self.dev_eui = dev_eui


MAX_MESSAGE = 64 * 1024  # no uplink is near this: a LoRaWAN payload is at most 242 bytes


def parse_uplink(server: str, payload: bytes) -> Uplink:
    """The uplink in one integration message; NotAnUplink (with the DevEUI when readable) otherwise."""
    if len(payload) > MAX_MESSAGE:
        raise NotAnUplink(f"{len(payload)} bytes: far larger than any uplink event")
    if server == TTN:
        return _ttn(_json(payload))
    if payload[:1] == b"{":
        return _chirpstack_json(_json(payload))
    return _chirpstack_protobuf(payload)


def _json(payload: bytes) -> dict:
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        raise NotAnUplink("not JSON") from None
    if not isinstance(doc, dict):
        raise NotAnUplink("not a JSON object")
    return doc


def _eui(value) -> str:
    if not isinstance(value, str) or len(value) != 16:
        raise NotAnUplink("no DevEUI of 16 hex digits")
    try:
        bytes.fromhex(value)
    except ValueError:
        raise NotAnUplink("no DevEUI of 16 hex digits") from None
    return value.lower()


def _data(value, dev_eui) -> bytes:
    if not isinstance(value, str) or not value:
        raise NotAnUplink("uplink without data", dev_eui)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise NotAnUplink("data is not base64", dev_eui) from None


def _number(value, name, dev_eui, default=0):
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise NotAnUplink(f"{name} is not a number", dev_eui)
    return value


def _address(value) -> str | None:
    # A DevAddr is 4 bytes in hex; anything else is not one (and only tells sessions apart).
    return value.lower() if isinstance(value, str) and len(value) == 8 else None


def _chirpstack_json(doc: dict) -> Uplink:
    info = doc.get("deviceInfo")
    dev_eui = _eui(info.get("devEui") if isinstance(info, dict) else None)
    tx = doc.get("txInfo") if isinstance(doc.get("txInfo"), dict) else {}
    lora = ((tx.get("modulation") or {}).get("lora") or {}) if isinstance(tx.get("modulation"), dict) else {}
    rx = doc.get("rxInfo", [])
    if not isinstance(rx, list) or not all(isinstance(g, dict) for g in rx):
        raise NotAnUplink("rxInfo is not a list of gateways", dev_eui)
    gateways = [(str(g.get("gatewayId", "")), _number(g.get("rssi"), "rssi", dev_eui),
                 _number(g.get("snr"), "snr", dev_eui, 0.0)) for g in rx]
    return Uplink(dev_eui, _data(doc.get("data"), dev_eui), _number(doc.get("fCnt"), "fCnt", dev_eui),
                  _number(doc.get("fPort"), "fPort", dev_eui), gateways,
                  _number(lora.get("spreadingFactor") if isinstance(lora, dict) else None, "spreadingFactor",
                          dev_eui, None),
                  _number(tx.get("frequency"), "frequency", dev_eui, None), _address(doc.get("devAddr")))


def _chirpstack_protobuf(payload: bytes) -> Uplink:
    from chirpstack_api import integration
    from google.protobuf.message import DecodeError

    try:
        event = integration.UplinkEvent.FromString(payload)
    except (DecodeError, RecursionError):
        raise NotAnUplink("neither JSON nor an UplinkEvent protobuf") from None
    dev_eui = _eui(event.device_info.dev_eui)
    if not event.data:
        raise NotAnUplink("uplink without data", dev_eui)
    lora = event.tx_info.modulation.lora
    return Uplink(dev_eui, bytes(event.data), event.f_cnt, event.f_port,
                  [(g.gateway_id, g.rssi, g.snr) for g in event.rx_info],
                  lora.spreading_factor or None, event.tx_info.frequency or None, _address(event.dev_addr))


def _ttn(doc: dict) -> Uplink:
    ids = doc.get("end_device_ids")
    dev_eui = _eui(ids.get("dev_eui") if isinstance(ids, dict) else None)
    message = doc.get("uplink_message")
    if not isinstance(message, dict):
        raise NotAnUplink("no uplink_message", dev_eui)
    rx = message.get("rx_metadata", [])
    if not isinstance(rx, list) or not all(isinstance(g, dict) for g in rx):
        raise NotAnUplink("rx_metadata is not a list of gateways", dev_eui)
    gateways = [(str((g.get("gateway_ids") or {}).get("gateway_id", "")) if isinstance(g.get("gateway_ids"), dict)
                 else "", _number(g.get("rssi"), "rssi", dev_eui), _number(g.get("snr"), "snr", dev_eui, 0.0))
                for g in rx]
    settings = message.get("settings") if isinstance(message.get("settings"), dict) else {}
    rate = settings.get("data_rate") if isinstance(settings.get("data_rate"), dict) else {}
    lora = rate.get("lora") if isinstance(rate.get("lora"), dict) else {}
    frequency = settings.get("frequency")
    try:
        frequency = int(frequency) if frequency is not None else None  # TTN writes it as a string
    except (TypeError, ValueError):
        raise NotAnUplink("frequency is not a number", dev_eui) from None
    return Uplink(dev_eui, _data(message.get("frm_payload"), dev_eui),
                  _number(message.get("f_cnt"), "f_cnt", dev_eui), _number(message.get("f_port"), "f_port", dev_eui),
                  gateways, _number(lora.get("spreading_factor"), "spreading_factor", dev_eui, None), frequency,
                  _address(ids.get("dev_addr")))
