# The serial line to the relay on a UART (RS-485 through a transceiver, or point to point): the
# board's UART and, for RS-485, the transceiver's driver-enable pin, for serial_link.Transport.
import serial_link


def make(config, settings, feed):
    """The agent's transport from agent.json (app.make_transport)."""
    from machine import UART, Pin

    line = settings["serial"]
    uart = UART(line["uart"], baudrate=line["baud"], tx=line["tx"], rx=line["rx"], timeout=10)
    de = None if line.get("de") is None else Pin(line["de"], Pin.OUT, value=0)
    return serial_link.Transport(uart, config["device_id"], de, line["baud"], line.get("polled", False),
                                 line.get("ack_timeout_ms", 1000), line.get("poll_wait_ms", 2000))
