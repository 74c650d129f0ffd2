"""`linkseal agent ...`: the agent on a Linux device (seal lines into a capture, or run against a broker)."""

import signal
import sys
import time
from pathlib import Path

from agent.frame import MAX_COUNTER
from shared.cli import InputError, Number, add_broker_options, broker_from_args, command


def add_agent_group(groups):
    agent = groups.add_parser("agent", help="the agent core on a Linux device")
    agent_sub = agent.add_subparsers(dest="command", required=True)
    seal = command(agent_sub, "seal", "Seal each line of standard input as one record; print capture lines.",
                   ["printf 'temp=21.5\\ntemp=21.6\\n' | linkseal agent seal --device pump-12.json --epoch 3 "
                    "> capture.jsonl"])
    seal.add_argument("--device", required=True, type=Path, help="device config from `keys provision`")
    seal.add_argument("--epoch", type=Number(int, 0, MAX_COUNTER), default=0,
                      help="boot epoch (the firmware persists it)")
    seal.add_argument("--timestamp", action="store_true", help="carry the device time in each frame")
    seal.set_defaults(run=_agent_seal)
    agent_run = command(agent_sub, "run", "Run the agent on a Linux device: one record per input line, sealed, queued "
                        "in the state directory and published; survives kill -9 without losing or resealing a record "
                        "(with a FILE source; standard input cannot be re-read).",
                        ["linkseal agent run --config pump-12.json --broker mqtt://broker:1883 --source readings.log",
                         "sensor-reader | linkseal agent run --config pump-12.json --broker mqtts://broker:8883 "
                         "--ca-file ca.pem",
                         "linkseal agent run --config monitor-3.json --serial /dev/ttyUSB0 --baud 57600 "
                         "--source vitals.log"])
    agent_run.add_argument("--config", required=True, type=Path, help="device config from `keys provision`")
    add_broker_options(agent_run, " (default: the device config's)", required=False)
    agent_run.add_argument("--serial", metavar="PORT", help="instead of --broker: a serial line to the relay "
                           "(`relay serial`), e.g. /dev/ttyUSB0")
    agent_run.add_argument("--baud", type=Number(int, 300, 4_000_000, " baud"), default=115200,
                           help="--serial: line speed (default 115200)")
    agent_run.add_argument("--rs485", action="store_true", help="--serial: switch the port to RS-485 mode (the "
                           "kernel drives the transceiver's DE)")
    agent_run.add_argument("--polled", action="store_true", help="--serial on a multi-drop bus: speak only when "
                           "the relay polls this device (relay serial --poll)")
    agent_run.add_argument("--ack-timeout", type=Number(float, 0.01, 60, " s"), default=1.0, metavar="SECONDS",
                           help="--serial: send a frame again when the relay has not acknowledged it by then "
                           "(default 1)")
    agent_run.add_argument("--state-dir", type=Path, help="epoch and queue (default ./linkseal-state/DEVICE)")
    agent_run.add_argument("--source", default="stdin", help="stdin (default) or a file of one record per line")
    agent_run.add_argument("--qos", type=int, choices=(0, 1), default=1)
    agent_run.add_argument("--max-rate", type=Number(float, 0, 1e6, " frames/s"), default=50.0,
                           help="frames per second at most, below the hub's rate limit (default 50; 0: none)")
    agent_run.add_argument("--heartbeat", type=Number(float, 0.1, 86400, " s"), default=30.0, metavar="SECONDS",
                           help="seconds between heartbeat status messages (default 30)")
    agent_run.add_argument("--log-json", action="store_true", help="log JSON Lines")
    agent_run.set_defaults(run=_agent_run)


def _agent_seal(args):
    from agent import topic_for
    from agent.sealer import sealer_for
    from shared.aes import ecb_block
    from shared.device_config import load_device_config
    from shared.capture import encode_line

    sealer = sealer_for(load_device_config(args.device), args.epoch, ecb_block)
    topic = topic_for(sealer.device_id)
    for number, line in enumerate(sys.stdin.buffer, start=1):
        record = line.rstrip(b"\r\n")
        now = time.time()
        try:
            data = sealer.seal(record, int(now * 1000) if args.timestamp else None)
        except ValueError as exc:
            raise InputError(f"stdin line {number}: {exc}") from None
        print(encode_line(round(now, 3), topic, data), flush=False)


def _agent_run(args):
    from firmware.device.epoch import EpochError
    from shared.device_config import load_device_config
    from shared.log import EventLog

    from .run import AgentState, LinuxAgent

    if bool(args.broker) == bool(args.serial):
        raise InputError("agent run: give either --broker (MQTT) or --serial (a line to the relay)")
    config = load_device_config(args.config)
    transport = _serial_transport(args, config) if args.serial else None
    broker = broker_from_args(args) if args.broker else None
    try:
        state = AgentState(args.state_dir or Path("linkseal-state") / config["device_id"])
    except EpochError as exc:
        raise InputError(str(exc)) from None
    log = EventLog(json_lines=args.log_json)
    if transport is not None:
        from .serial_agent import SerialAgent

        agent = SerialAgent(config, transport, state, log, max_rate=args.max_rate, heartbeat_s=args.heartbeat)
    else:
        agent = LinuxAgent(config, broker, state, log, qos=args.qos, max_rate=args.max_rate,
                           heartbeat_s=args.heartbeat)
    signal.signal(signal.SIGTERM, lambda *_: agent.stopping.set())
    if args.source == "stdin":
        return agent.run(sys.stdin.buffer)
    try:
        source = open(args.source, "rb")
    except OSError as exc:
        raise InputError(f"--source {args.source}: {exc.strerror}") from None
    with source:
        return agent.run(source)


def _serial_transport(args, config):
    from shared.serial_port import open_port

    from .serial_agent import LinuxSerialTransport

    port = open_port(args.serial, args.baud, args.rs485, option="--serial")
    return LinuxSerialTransport(port, config["device_id"], baud=args.baud, polled=args.polled,
                                ack_timeout_ms=int(args.ack_timeout * 1000))
