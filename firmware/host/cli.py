"""`linkseal firmware ...`: build a device's firmware files, flash them onto a board."""

from pathlib import Path

from shared.cli import InputError, Number, command


def add_firmware_group(groups):
    firmware = groups.add_parser("firmware", help="build device firmware and flash it with mpremote")
    sub = firmware.add_subparsers(dest="command", required=True)
    build = command(sub, "build", "Compile the agent and firmware to .mpy for one device and board, with its "
                    "config, its settings (broker, WiFi), first epoch and a manifest.py for custom firmware images.",
                    ["linkseal firmware build --device pump-12.json --board esp32 --broker mqtts://broker.lan "
                     "--wifi-ssid ward-4 --wifi-password-file wifi.txt --out build/pump-12",
                     "linkseal firmware build --device field-tx-3.json --board esp32-rak3172 --heartbeat 600 "
                     "--record-interval 300000 --out build/field-tx-3",
                     "linkseal firmware build --device plc-7.json --board esp32 --transport uart --polled "
                     "--out build/plc-7"])
    build.add_argument("--device", required=True, type=Path, help="device config from `keys provision`")
    build.add_argument("--board", required=True, help="a board from hardware/boards (esp32, esp32-s3, rp2-pico-w, "
                       "esp32-rak3172), or the path of a board file of your own (.toml)")
    build.add_argument("--encrypt", action="store_true", help="require that the device encrypts its records "
                       "(keys provision --encrypt; the build then holds the cipher) on a board whose firmware has "
                       "cryptolib")
    build.add_argument("--transport", choices=("mqtt", "lorawan", "uart", "ble"),
                       help="mqtt: WiFi and a broker; lorawan: the board's LoRaWAN modem; uart: the board's serial "
                       "line to a relay; ble: BLE (Nordic UART Service) to a relay (default: uart for an rs485 "
                       "device, ble for a ble device, lorawan on a board with a modem, else mqtt)")
    build.add_argument("--polled", action="store_true", help="uart on a multi-drop bus: speak only when the relay "
                       "polls this device (relay serial --poll)")
    build.add_argument("--baud", type=Number(int, 300, 4_000_000, " baud"), help="uart: the line's speed "
                       "(default: the board file's)")
    build.add_argument("--broker", help="mqtt://HOST:PORT or mqtts://HOST:PORT the device publishes to (mqtt only)")
    build.add_argument("--ca-file", type=Path, help="CA certificate of the broker (mqtts), put on the board so it "
                       "checks the broker's certificate")
    build.add_argument("--wifi-ssid", help="WiFi network to join (boards with WiFi)")
    build.add_argument("--wifi-password-file", type=Path, help="file holding the WiFi password")
    build.add_argument("--qos", type=int, default=1, choices=(0, 1), help="MQTT QoS of records (default 1)")
    build.add_argument("--heartbeat", type=Number(int, 1, 86400, " s"), default=30, metavar="SECONDS",
                       help="seconds between heartbeats (default 30)")
    build.add_argument("--record-interval", type=Number(int, 10, 86_400_000, " ms"), default=1000, metavar="MS",
                       help="how often records.read() is asked for a record (default 1000 ms)")
    build.add_argument("--out", required=True, type=Path, help="build directory (replaced)")
    build.set_defaults(run=_build)

    flash = command(sub, "flash", "Copy a build onto a board with mpremote, install umqtt.simple when the board "
                    "lacks it, optionally check every file's SHA-256, and reset the board.",
                    ["linkseal firmware flash --port /dev/ttyUSB0 --build build/pump-12 --verify",
                     "linkseal firmware flash --port /dev/ttyACM0 --build build/pump-12 "
                     "--micropython-lib ~/src/micropython-lib"])
    flash.add_argument("--port", required=True, help="the board's serial port (as for `mpremote connect`)")
    flash.add_argument("--build", required=True, type=Path, help="directory written by `firmware build`")
    flash.add_argument("--verify", action="store_true", help="compare each file's SHA-256 on the board")
    flash.add_argument("--micropython-lib", type=Path,
                       help="local micropython-lib checkout to take umqtt.simple from (else mpremote mip install)")
    flash.set_defaults(run=_flash)


def _build(args):
    from firmware.host.build import agent_settings, ble_settings, build, lorawan_settings, serial_settings
    from hardware.board_registry import board
    from shared.device_config import load_device_config
    from shared.settings import parse_broker

    target = board(args.board)
    config = load_device_config(args.device)
    if args.encrypt and not config.get("encrypt"):
        raise InputError(f"--encrypt: {args.device}: device {config['device_id']} was provisioned to send records in "
                         "clear; provision it with `keys provision ... --encrypt --force` (its key stays the same)")
    transport = args.transport or {"rs485": "uart", "ble": "ble"}.get(config["link"]) or (
        "lorawan" if target.lorawan else "mqtt")
    if (args.polled or args.baud) and transport != "uart":
        raise InputError("--polled, --baud: for the uart transport only")
    if transport in ("uart", "ble"):
        if args.broker or args.wifi_ssid or args.ca_file:
            raise InputError(f"--broker, --wifi-ssid, --ca-file: a device on {transport} reaches no broker; the relay "
                             "does (relay serial|ble --broker)")
        settings = (serial_settings(target, args.polled, args.baud, args.heartbeat, args.record_interval)
                    if transport == "uart" else ble_settings(target, args.heartbeat, args.record_interval))
        return _report(args, build(args.device, target, args.out, settings))
    if transport == "lorawan":
        if args.broker or args.wifi_ssid or args.ca_file:
            raise InputError("--broker, --wifi-ssid, --ca-file: a LoRaWAN device reaches no broker; its network "
                             "server does (hub run --lorawan)")
        settings = lorawan_settings(target, config, args.heartbeat, args.record_interval)
        return _report(args, build(args.device, target, args.out, settings))
    if not args.broker:
        raise InputError("--broker is required for the mqtt transport")
    if config["link"] == "lora" and args.transport is None:
        raise InputError(f"{args.device}: a lora device, but board {args.board} has no LoRaWAN modem: pick one that "
                         "has (esp32-rak3172), or --transport mqtt to carry its records over WiFi")
    wifi_password = None
    if args.wifi_password_file:
        try:
            wifi_password = args.wifi_password_file.read_text().strip()
        except OSError as exc:
            raise InputError(f"--wifi-password-file {args.wifi_password_file}: {exc.strerror}") from None
    broker = parse_broker(args.broker, ca_file=args.ca_file)
    settings = agent_settings(broker, target, args.wifi_ssid, wifi_password, args.qos, args.heartbeat,
                              args.record_interval)
    _report(args, build(args.device, target, args.out, settings, args.ca_file))


def _report(args, sizes):
    from firmware.host.build import AGENT_BUDGET, FIRMWARE_BUDGET

    cipher = f", cipher {sizes['cipher']} bytes (records encrypted)" if sizes["cipher"] else ""
    print(f"built {args.out} for {args.board}: agent core {sizes['agent']} bytes of .mpy "
          f"(budget {AGENT_BUDGET}){cipher}, "
          f"firmware {sizes['firmware']} bytes (budget {FIRMWARE_BUDGET}); device.json and agent.json are 0600")
    if sizes["agent"] > AGENT_BUDGET or sizes["firmware"] > FIRMWARE_BUDGET:
        raise InputError("the build is over its size budget")


def _flash(args):
    from firmware.host.flash import flash

    flash(args.port, args.build, verify=args.verify, micropython_lib=args.micropython_lib)
