"""The relay: carries sealed frames from devices on a serial line (RS-485, a UART) or BLE to
the MQTT broker, on a gateway beside the devices. It holds no key and imports nothing of the
hub: whatever it drops shows at the hub as loss, whatever it alters as forgery (docs/relay.md)."""
