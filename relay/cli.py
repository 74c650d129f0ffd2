"""`linkseal relay ...`: the keyless relay on a gateway (docs/relay.md)."""

from pathlib import Path

from shared.cli import InputError, Number, add_broker_options, broker_from_args, command, host_port


def add_relay_group(groups):
    relay = groups.add_parser("relay", help="carry frames from serial and BLE devices to the broker (keyless)")
    sub = relay.add_subparsers(dest="command", required=True)
    serial = command(sub, "serial", "Carry frames from devices on a serial line (RS-485 or a UART) to the broker: "
                     "each acknowledged to its device once the broker has it, spooled on disk meanwhile.",
                     ["linkseal relay serial --port /dev/ttyUSB0 --broker mqtts://broker.lan --ca-file ca.pem "
                      "--username relay-line-3 --password-file relay.pw --name line-3",
                      "linkseal relay serial --port /dev/ttyAMA0 --baud 19200 --rs485 --poll plc-7,plc-8,plc-9 "
                      "--broker mqtt://127.0.0.1:1883 --name hall-2"])
    serial.add_argument("--port", required=True, help="the serial port (/dev/ttyUSB0, /dev/ttyAMA0, ...)")
    serial.add_argument("--baud", type=Number(int, 300, 4_000_000, " baud"), default=115200,
                        help="line speed (default 115200)")
    serial.add_argument("--rs485", action="store_true", help="switch the port's driver to RS-485 mode (the kernel "
                        "drives DE around each write; not needed with automatic direction control)")
    serial.add_argument("--poll", help="multi-drop bus: poll these device ids in turn (comma-separated); devices "
                        "speak only when polled (firmware build --polled)")
    serial.add_argument("--answer-timeout", type=Number(float, 0.005, 10, " s"), default=0.2, metavar="SECONDS",
                        help="how long a polled device has to answer (default 0.2)")
    add_relay_options(serial)
    serial.set_defaults(run=_serial)

    ble = command(sub, "ble", "Carry frames from BLE devices (Nordic UART Service) to the broker: scan, connect to "
                  "each, acknowledge each frame once the broker has it (bleak: BlueZ over D-Bus).",
                  ["linkseal relay ble --broker mqtts://broker.lan --ca-file ca.pem --username linkseal/relay/ward-4 "
                   "--password-file relay.pw --name ward-4"])
    ble.add_argument("--adapter", help="the Bluetooth adapter (default: BlueZ's default, hci0)")
    add_relay_options(ble)
    ble.set_defaults(run=_ble)


def add_relay_options(parser):
    """What every relay command takes: its broker and account, its name, spool, metrics, log."""
    add_broker_options(parser, " (the relay's own account)")
    parser.add_argument("--name", required=True, help="this relay's name (client id linkseal-relay-NAME)")
    parser.add_argument("--state-dir", type=Path, help="spool directory (default ./linkseal-relay/NAME)")
    parser.add_argument("--spool-bytes", type=Number(int, 4096, 2**40, " bytes"), default=16 * 1024 * 1024,
                        help="spool size on disk; when full, frames are refused unacknowledged (default 16 MiB)")
    parser.add_argument("--metrics", type=host_port, metavar="HOST:PORT", help="serve /metrics and /health here")
    parser.add_argument("--log-json", action="store_true", help="log JSON Lines")


def _devices(text):
    from agent.sealer import check_device_id

    devices = [item.strip() for item in (text or "").split(",") if item.strip()]
    for device in devices:
        try:
            check_device_id(device)
        except ValueError as exc:
            raise InputError(f"--poll {device!r}: {exc}") from None
    if text is not None and not devices:
        raise InputError("--poll: name at least one device id")
    return devices


def _relay_for(args):
    """The relay of either command: name checked, broker, spool, log (before anything opens)."""
    from agent.sealer import check_device_id
    from shared.log import EventLog

    from .broker import Publisher
    from .run import Relay
    from .spool import Spool

    try:
        check_device_id(args.name)
    except ValueError as exc:
        raise InputError(f"--name {args.name!r}: {exc}") from None
    poll = _devices(getattr(args, "poll", None))
    broker = broker_from_args(args)
    log = EventLog(json_lines=args.log_json)
    return lambda: Relay(Spool(args.state_dir or Path("linkseal-relay") / args.name, args.spool_bytes),
                         Publisher(broker, args.name, log), log, poll, getattr(args, "answer_timeout", 0.2))


def _serve(relay, args):
    import signal

    from .metrics import serve

    signal.signal(signal.SIGTERM, lambda *_: relay.stopping.set())
    if args.metrics:
        server = serve(relay, *args.metrics)
        relay.log("metrics", address="%s:%d" % server.server_address[:2])


def _ble(args):
    from .ble_central import BleakCentral, NoBluetooth

    relay = _relay_for(args)()
    _serve(relay, args)
    broker = relay.start()
    relay.log("started", ble=args.adapter or "default", spooled=relay.spool.depth)
    try:
        BleakCentral(relay.log, args.adapter).run(relay.add_line, relay.stopping)
    except NoBluetooth as exc:
        raise InputError(str(exc)) from None
    finally:
        relay.stop(broker)
    return 0


def _serial(args):
    from shared.serial_port import open_port

    make_relay = _relay_for(args)
    port = open_port(args.port, args.baud, args.rs485)
    relay = make_relay()
    _serve(relay, args)
    with port:
        return relay.run(port)
