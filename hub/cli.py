"""The `linkseal` command: groups keys, hub, sim, firmware, agent, demo.

Every input or usage error ends with one line `linkseal: error: ...` naming what and where,
exit status 2, no traceback. Keys are never printed.
"""

import argparse
import re
import sys
import time
from pathlib import Path

from rich.console import Console

EXIT_INPUT = 2


class InputError(Exception):
    """Bad input from the user: reported as one line, exit status 2."""


def _parser_with_examples(sub, name, help_text, examples):
    return sub.add_parser(name, help=help_text, description=help_text,
                          epilog="example:\n  " + "\n  ".join(examples),
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="linkseal",
        description="Edge integrity for constrained networks: seal records on devices, verify them per link.",
        epilog="example:\n  linkseal demo\n  linkseal keys init --out hub.keys\n"
               "  linkseal hub verify capture.jsonl --keys hub.keys",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    groups = parser.add_subparsers(dest="group", metavar="{keys,hub,sim,firmware,agent,demo}")
    groups.required = True

    keys = groups.add_parser("keys", help="create the hub key file and provision devices")
    keys_sub = keys.add_subparsers(dest="command", required=True)
    init = _parser_with_examples(keys_sub, "init", "Create a hub key file (mode 0600) with a random master secret.",
                                 ["linkseal keys init --out hub.keys"])
    init.add_argument("--out", required=True, type=Path, help="path of the new key file")
    init.set_defaults(run=_keys_init)
    prov = _parser_with_examples(
        keys_sub, "provision", "Register a device and write its config (mode 0600) with its derived key.",
        ["linkseal keys provision pump-12 --keys hub.keys --link wifi --out pump-12.json"])
    prov.add_argument("device_id")
    prov.add_argument("--keys", required=True, type=Path, help="hub key file")
    prov.add_argument("--link", required=True, help="home link type (see hardware/links)")
    prov.add_argument("--tag-len", type=int, default=16, choices=(8, 16, 32),
                      help="tag length; also the minimum the hub accepts from this device (default 16)")
    prov.add_argument("--key-id", type=int, default=0, help="key id, 0..255 (default 0)")
    prov.add_argument("--out", required=True, type=Path, help="where to write the device config")
    prov.set_defaults(run=_keys_provision)

    hub = groups.add_parser("hub", help="verify frames and report per link")
    hub_sub = hub.add_subparsers(dest="command", required=True)
    verify = _parser_with_examples(
        hub_sub, "verify", "Verify a capture file (JSON Lines of MQTT messages) and print the per-link report.",
        ["linkseal hub verify capture.jsonl --keys hub.keys",
         "linkseal hub verify capture.jsonl --keys hub.keys --json > report.json"])
    verify.add_argument("capture", type=Path)
    verify.add_argument("--keys", required=True, type=Path, help="hub key file")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.add_argument("--devices", action="store_true", help="also show the per-device table")
    verify.set_defaults(run=_hub_verify)
    hub_run = _parser_with_examples(
        hub_sub, "run", "Subscribe to the broker, verify and store every frame, serve metrics. Runs until SIGTERM.",
        ["linkseal hub run --broker mqtt://127.0.0.1:1883 --keys hub.keys --db hub.db --metrics 127.0.0.1:9108",
         "LINKSEAL_MQTT_PASSWORD=$(cat /run/secrets/mqtt) linkseal hub run --broker mqtts://broker:8883 \\\n"
         "      --ca-file ca.pem --cert-file hub.pem --key-file hub-key.pem --username hub --keys hub.keys --db hub.db"])
    hub_run.add_argument("--broker", required=True, help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    hub_run.add_argument("--keys", required=True, type=Path, help="hub key file")
    hub_run.add_argument("--db", required=True, type=Path, help="SQLite database (created 0600)")
    hub_run.add_argument("--metrics", help="serve Prometheus metrics on HOST:PORT (e.g. 127.0.0.1:9108)")
    hub_run.add_argument("--config", type=Path, help="hub.toml: client id, queue and batch sizes, rate limits")
    hub_run.add_argument("--ca-file", help="CA certificate that signed the broker's certificate (mqtts)")
    hub_run.add_argument("--cert-file", help="client certificate for mutual TLS")
    hub_run.add_argument("--key-file", help="client certificate's private key for mutual TLS")
    hub_run.add_argument("--username", help="MQTT user name; the password comes from LINKSEAL_MQTT_PASSWORD "
                                            "or --password-file, never the command line")
    hub_run.add_argument("--password-file", help="file holding the MQTT password")
    hub_run.add_argument("--log-json", action="store_true", help="log JSON Lines instead of key=value text")
    hub_run.set_defaults(run=_hub_run)
    report = _parser_with_examples(
        hub_sub, "report", "The per-link report over stored data.",
        ["linkseal hub report --db hub.db --since 15m", "linkseal hub report --db hub.db --link wifi --json"])
    report.add_argument("--db", required=True, type=Path)
    report.add_argument("--since", help="only the last 15m, 2h, 1d ... (minute resolution)")
    report.add_argument("--link", help="only this link type")
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    report.add_argument("--devices", action="store_true", help="also show the per-device table")
    report.set_defaults(run=_hub_report)
    audit = _parser_with_examples(hub_sub, "audit", "Check the hash chain of stored security events.",
                                  ["linkseal hub audit --db hub.db"])
    audit.add_argument("--db", required=True, type=Path)
    audit.set_defaults(run=_hub_audit)

    sim = groups.add_parser("sim", help="simulated link faults and attacks, with ground truth")
    sim_sub = sim.add_subparsers(dest="command", required=True)
    capture = _parser_with_examples(
        sim_sub, "capture", "Write the demo scenario's traffic as a capture file, with its key file.",
        ["linkseal sim capture --out demo.jsonl --keys-out demo.keys --seed 7"])
    capture.add_argument("--out", required=True, type=Path, help="capture file to write")
    capture.add_argument("--keys-out", required=True, type=Path, help="hub key file to write for its devices")
    capture.add_argument("--seed", type=int, default=1)
    capture.add_argument("--frames", type=int, default=2000, help="frames per device")
    capture.add_argument("--stress", type=float, default=1.0, help="multiply every link's fault rates")
    capture.set_defaults(run=_sim_capture)

    agent = groups.add_parser("agent", help="the agent core on a Linux device")
    agent_sub = agent.add_subparsers(dest="command", required=True)
    seal = _parser_with_examples(
        agent_sub, "seal", "Seal each line of standard input as one record; print capture lines.",
        ["printf 'temp=21.5\\ntemp=21.6\\n' | linkseal agent seal --device pump-12.json --epoch 3 > capture.jsonl"])
    seal.add_argument("--device", required=True, type=Path, help="device config from `keys provision`")
    seal.add_argument("--epoch", type=int, default=0, help="boot epoch (the firmware persists it)")
    seal.add_argument("--timestamp", action="store_true", help="carry the device time in each frame")
    seal.set_defaults(run=_agent_seal)

    firmware = groups.add_parser("firmware", help="build and flash device firmware (not available yet)")
    firmware.set_defaults(run=_firmware)

    demo = _parser_with_examples(groups, "demo", "Run devices on every link type through faults and attacks, "
                                 "verify with the hub core, print the per-link table.",
                                 ["linkseal demo", "linkseal demo --seed 7 --stress 10"])
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument("--frames", type=int, default=2000, help="frames per device (default 2000)")
    demo.add_argument("--stress", type=float, default=1.0, help="multiply every link's fault rates")
    demo.set_defaults(run=_demo)
    return parser


# -- commands -----------------------------------------------------------------------


def _keys_init(args):
    from .keys import KeyFile

    KeyFile.create(args.out)
    print(f"created {args.out} (mode 0600): keep it on the bastion host only")


def _keys_provision(args):
    from .keys import KeyFile, write_private_json

    keyfile = KeyFile.load(args.keys)
    config = keyfile.provision(args.device_id, args.link, args.tag_len, args.key_id)
    write_private_json(args.out, config)
    print(f"provisioned {args.device_id} on {args.link} (tag {args.tag_len} bytes, key id {args.key_id}); "
          f"device config written to {args.out} (mode 0600)")


def _verifier_for(keys_path, rate_limits=None):
    from .keys import KeyFile
    from .link_registry import links_by_code
    from .verifier import Verifier

    keyfile = KeyFile.load(keys_path)
    return Verifier(keyfile.device_keys(), {code: link.name for code, link in links_by_code().items()}, rate_limits)


def _hub_verify(args):
    from .capture import read_capture
    from .report import build_report, to_json
    from .table import print_report

    verifier = _verifier_for(args.keys)
    messages = read_capture(args.capture)
    for t, topic, payload in messages:
        verifier.verify(topic, payload, t)
    report = build_report(verifier)
    if args.json:
        print(to_json(report))
    else:
        print_report(report, Console(width=80), devices=args.devices)


def _hub_run(args):
    from .config import load_settings, parse_broker
    from .ingest import Ingest
    from .link_registry import load_links
    from .log import EventLog
    from .metrics import HubMetrics
    from .service import HubService
    from .storage import SQLiteStorage

    broker = parse_broker(args.broker, args.ca_file, args.cert_file, args.key_file, args.username,
                          args.password_file)
    settings = load_settings(args.config, load_links())
    log = EventLog(json_lines=args.log_json or settings.log_json)
    verifier = _verifier_for(args.keys, settings.rate_limits)
    ingest = Ingest(verifier, SQLiteStorage(args.db))
    metrics = HubMetrics(verifier)
    if args.metrics:
        try:
            metrics.address = metrics.serve(args.metrics)
        except (OSError, ValueError) as exc:
            raise InputError(f"--metrics {args.metrics}: cannot listen ({exc})") from None
    return HubService(broker, settings, ingest, log, metrics).run()


def _parse_since(text):
    match = re.fullmatch(r"(\d+)([smhd])", text or "")
    if not match:
        raise InputError(f"--since {text!r}: expected a number and a unit, like 90s, 15m, 2h or 1d")
    return time.time() - int(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]


def _hub_report(args):
    from .report import build_stored_report, to_json
    from .storage import SQLiteStorage
    from .table import print_report

    since = _parse_since(args.since) if args.since is not None else None
    storage = SQLiteStorage(args.db, create=False)
    try:
        report = build_stored_report(storage, since, args.link)
    finally:
        storage.close()
    if args.json:
        print(to_json(report))
    else:
        print_report(report, Console(width=80), devices=args.devices)


def _hub_audit(args):
    from .storage import SQLiteStorage

    storage = SQLiteStorage(args.db, create=False)
    try:
        checked, broken = storage.audit()
    finally:
        storage.close()
    if broken:
        print(f"BROKEN after {checked} intact events: {broken}")
        return 1
    print(f"OK: {checked} security events, hash chain intact")
    return 0


def _sim_capture(args):
    from simulator import scenario

    from .capture import encode_line
    from .keys import KeyFile

    if args.frames < 1:
        raise InputError("--frames must be at least 1")
    keyfile = KeyFile.create(args.keys_out)
    traffic = scenario.build(seed=args.seed, frames=args.frames, stress=args.stress, keyfile=keyfile)
    with open(args.out, "w") as out:
        for t, topic, data, _ in traffic.messages:
            out.write(encode_line(t, topic, data) + "\n")
    print(f"wrote {len(traffic.messages)} messages to {args.out} and the keys of "
          f"{len(traffic.devices)} devices to {args.keys_out}")


def _agent_seal(args):
    from agent import Sealer, topic_for

    from .capture import encode_line
    from .keys import load_device_config

    config = load_device_config(args.device)
    sealer = Sealer(config["device_id"], bytes.fromhex(config["key"]), key_id=config["key_id"],
                    link=config["link"], epoch=args.epoch, tag_len=config["tag_len"])
    topic = topic_for(sealer.device_id)
    for number, line in enumerate(sys.stdin.buffer, start=1):
        record = line.rstrip(b"\r\n")
        now = time.time()
        try:
            data = sealer.seal(record, int(now * 1000) if args.timestamp else None)
        except ValueError as exc:
            raise InputError(f"stdin line {number}: {exc}") from None
        print(encode_line(round(now, 3), topic, data), flush=False)


def _firmware(args):
    raise InputError("the firmware group has no commands yet: building and flashing arrive with the firmware issue")


def _demo(args):
    from simulator import demo

    if args.frames < 1:
        raise InputError("--frames must be at least 1")
    return demo.run(seed=args.seed, frames=args.frames, stress=args.stress)


def main(argv=None) -> int:
    from .capture import CaptureError
    from .config import ConfigError
    from .keys import KeyFileError
    from .link_registry import RegistryError
    from .storage import StorageError

    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except (InputError, CaptureError, ConfigError, KeyFileError, RegistryError, StorageError, ValueError,
            OSError) as exc:
        message = f"{exc.filename}: {exc.strerror}" if isinstance(exc, OSError) and exc.filename else str(exc)
        print(f"linkseal: error: {message}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
