"""The air and the network server between an emulated modem and the hub: sans-I/O, seeded.

- `Radio`: each gateway hears an uplink or not (its own loss), with its own RSSI and SNR.
- `NetworkServer`: de-duplicates what the gateways heard into one event per uplink (every
  gateway that heard it in the event's gateway list), keeps the modem's fCnt, and writes the
  integration's message: ChirpStack v4 (the JSON mapping of `integration.UplinkEvent`, zero
  fields left out, or binary protobuf; made with the `chirpstack-api` classes) or The Things
  Stack v3 JSON (its documented shape). An uplink no gateway heard produces nothing.
- `truth`: every uplink the modem sent, whether any gateway heard it: the ground truth of
  `lost_after_transmission`.

The event encoders here are the only ones: tests and benchmarks make their events with them.
"""

import base64
import json
import random
from dataclasses import dataclass, field

from hub.core.network_servers import CHIRPSTACK, TTN

FREQUENCIES = (868100000, 868300000, 868500000)  # EU868's three default channels


def chirpstack_topic(dev_eui: str, application_id: str = "7") -> str:
    return f"application/{application_id}/device/{dev_eui}/event/up"


def ttn_topic(device_name: str, application: str = "linkseal@ttn") -> str:
    return f"v3/{application}/devices/{device_name}/up"


def chirpstack_event(dev_eui, frame, f_cnt, f_port=10, gateways=(("gw-1", -101, 7.5),), spreading_factor=9,
                     frequency=868100000, binary=False, dev_addr="26011b01") -> bytes:
    """A ChirpStack v4 uplink event: its JSON mapping (as `json=true` publishes) or protobuf."""
    from chirpstack_api import integration
    from google.protobuf import json_format

    event = integration.UplinkEvent(deduplication_id="7c8d2f10-2c5e-4d3c-9a0e-%012x" % f_cnt, f_cnt=f_cnt,
                                    f_port=f_port, data=frame)
    event.device_info.dev_eui = dev_eui
    event.device_info.application_id = "7"
    event.dev_addr = dev_addr
    event.tx_info.frequency = frequency
    event.tx_info.modulation.lora.spreading_factor = spreading_factor
    event.tx_info.modulation.lora.bandwidth = 125000
    for gateway, rssi, snr in gateways:
        rx = event.rx_info.add()
        rx.gateway_id, rx.rssi, rx.snr = gateway, rssi, snr
    return event.SerializeToString() if binary else json_format.MessageToJson(event).encode()


def ttn_event(dev_eui, frame, f_cnt, f_port=10, gateways=(("ttn-gw", -97, 9.25),), spreading_factor=7,
              frequency=868300000, device_name="field-tx-4", dev_addr="26011b01") -> bytes:
    """A The Things Stack v3 uplink message, by its documented shape (unknown fields included)."""
    return json.dumps({
        "end_device_ids": {"device_id": device_name, "dev_eui": dev_eui.upper(), "dev_addr": dev_addr.upper(),
                           "application_ids": {"application_id": "linkseal"}},
        "received_at": "2026-12-04T10:00:00Z", "correlation_ids": ["as:up:01"],
        "uplink_message": {"f_port": f_port, "f_cnt": f_cnt, "frm_payload": base64.b64encode(frame).decode(),
                           "rx_metadata": [{"gateway_ids": {"gateway_id": gateway}, "rssi": rssi, "snr": snr,
                                            "channel_rssi": rssi} for gateway, rssi, snr in gateways],
                           "settings": {"data_rate": {"lora": {"bandwidth": 125000,
                                                               "spreading_factor": spreading_factor}},
                                        "frequency": str(frequency)},
                           "consumed_airtime": "0.061696s"},
    }).encode()


@dataclass(frozen=True)
class Gateway:
    gateway_id: str
    loss: float = 0.0  # share of uplinks it misses
    rssi: float = -100.0  # mean dBm
    snr: float = 7.0  # mean dB


class Radio:
    def __init__(self, gateways, seed: int = 7):
        self.gateways = list(gateways)
        self.rng = random.Random(seed)

    def heard_by(self) -> list:
        """[(gateway id, rssi, snr)] of the gateways that heard one uplink."""
        heard = []
        for gateway in self.gateways:
            if self.rng.random() >= gateway.loss:
                heard.append((gateway.gateway_id, round(gateway.rssi + self.rng.gauss(0, 2)),
                               round(gateway.snr + self.rng.gauss(0, 1.5), 1)))
        return heard


@dataclass
class NetworkServer:
    server: str  # CHIRPSTACK or TTN
    dev_eui: str
    radio: Radio
    publish: object  # publish(topic, payload bytes)
    binary: bool = False  # ChirpStack with json=false
    device_name: str = "device"
    truth: list = field(default_factory=list)  # (fCnt, fPort, [gateway ids that heard it]) per uplink sent

    def uplink(self, sent) -> None:
        """One uplink from the modem (simulator/lorawan/modem.py SentUplink)."""
        heard = self.radio.heard_by()
        self.truth.append((sent.f_cnt, sent.f_port, [gateway for gateway, _, _ in heard]))
        if not heard:
            return
        frequency = FREQUENCIES[sent.f_cnt % len(FREQUENCIES)]
        if self.server == CHIRPSTACK:
            self.publish(chirpstack_topic(self.dev_eui),
                         chirpstack_event(self.dev_eui, sent.payload, sent.f_cnt, sent.f_port, heard,
                                          sent.spreading_factor, frequency, self.binary, sent.dev_addr))
        elif self.server == TTN:
            self.publish(ttn_topic(self.device_name),
                         ttn_event(self.dev_eui, sent.payload, sent.f_cnt, sent.f_port, heard,
                                   sent.spreading_factor, frequency, self.device_name, sent.dev_addr))
        else:
            raise ValueError(f"unknown network server {self.server!r}")
