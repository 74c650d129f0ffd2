"""`linkseal hub ...`: verify captures, run the service, report, audit, broker configuration."""

import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

from rich.console import Console

from hub.cli_common import (
    PORT,
    InputError,
    Number,
    add_broker_options,
    add_keys_option,
    broker_from_args,
    command,
    duration,
    host_port,
    open_keyfile,
)


def add_hub_group(groups):
    hub = groups.add_parser("hub", help="verify frames, run the hub service, report per link")
    sub = hub.add_subparsers(dest="command", required=True)

    verify = command(sub, "verify", "Verify a capture file (JSON Lines of MQTT messages) and print the per-link "
                     "report.", ["linkseal hub verify capture.jsonl --keys hub.keys",
                                 "linkseal hub verify capture.jsonl --keys hub.keys --json > report.json"])
    verify.add_argument("capture", type=Path)
    add_keys_option(verify)
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.add_argument("--devices", action="store_true", help="also show the per-device table")
    verify.add_argument("--config", type=Path, help="hub.toml: its [policy], [watch] and [[behaviour]] apply, on "
                        "the capture's own times")
    verify.set_defaults(run=_verify)

    run = command(sub, "run", "Subscribe to the broker, verify and store every frame, serve metrics. Runs until "
                  "SIGTERM; SIGHUP reloads the key file (rotations, revocations, new devices).",
                  ["linkseal hub run --broker mqtt://127.0.0.1:1883 --keys hub.keys --db hub.db "
                   "--metrics 127.0.0.1:9108",
                   "LINKSEAL_PASSPHRASE_FILE=pass linkseal hub run --broker mqtts://broker:8883 --ca-file ca.pem \\\n"
                   "      --cert-file hub.pem --key-file hub-key.pem --keys hub.keys --db hub.db"])
    add_broker_options(run)
    add_keys_option(run)
    run.add_argument("--db", required=True, help="SQLite database file (created 0600); with an amqp:// broker, "
                     "postgresql://... shared by every hub worker (docs/scale-out.md)")
    run.add_argument("--metrics", type=host_port,
                     help="serve Prometheus metrics on HOST:PORT (e.g. 127.0.0.1:9108; port 0: any)")
    run.add_argument("--config", type=Path, help="hub.toml: client id, queue and batch sizes, rate limits")
    run.add_argument("--log-json", action="store_true", help="log JSON Lines instead of key=value text")
    _console_options(run, "--console", "serve the read-only operator console on HOST:PORT (e.g. 127.0.0.1:8088)")
    run.add_argument("--forward", action="append", default=[], metavar="URL",
                     help="deliver every authentic record inward, at least once: mqtt://HOST:PORT or mqtts://... "
                          "(topic linkseal/verified/<device>) or postgresql://... (table linkseal_records); "
                          "repeatable; credentials and TLS files go in hub.toml [[forward]]")
    run.add_argument("--lorawan", action="append", default=[], metavar="URL",
                     help="also read a LoRaWAN network server's MQTT integration: chirpstack+mqtt://HOST:PORT, "
                          "chirpstack+mqtts://..., ttn+mqtt://... or ttn+mqtts://...; repeatable; logins and CA files "
                          "go in hub.toml [[lorawan]] (devices by DevEUI: `keys provision --dev-eui`)")
    run.set_defaults(run=_run)

    report = command(sub, "report", "The per-link report over stored data. Before reading it runs SQLite's quick "
                     "check (the file's structure, not its indexes: `hub audit` runs the full check, the event "
                     "chain and the seals).",
                     ["linkseal hub report --db hub.db --since 15m",
                      "linkseal hub report --db hub.db --link wifi --json",
                      "linkseal hub report --db postgresql://db.plant/linkseal (hub workers)"])
    report.add_argument("--db", required=True, help="the hub's SQLite file, or the workers' postgresql://...")
    report.add_argument("--since", type=duration, help="only the last 15m, 2h, 1d ... (minute resolution)")
    report.add_argument("--link", help="only this link type")
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    report.add_argument("--devices", action="store_true", help="also show the per-device table")
    report.set_defaults(run=_report)

    console = command(sub, "console", "Serve the read-only operator console (links, charts, security events, "
                      "devices) over a hub's database, running or stopped, until Ctrl-C.",
                      ["linkseal hub console --db hub.db", "linkseal hub console --db hub.db --listen 127.0.0.1:8088",
                       "linkseal hub console --db postgresql://db.plant/linkseal (hub workers)"])
    console.add_argument("--db", required=True, help="the hub's SQLite file, or the hub workers' postgresql://...")
    _console_options(console, "--listen", "HOST:PORT to serve on (default 127.0.0.1:8088)")
    console.set_defaults(run=_console)

    prune = command(sub, "prune", "Apply the retention settings to a stopped hub's database now, and hand the "
                    "freed space back to the file system (`hub run` prunes by itself, a small step at a time).",
                    ["linkseal hub prune --db hub.db --keys hub.keys",
                     "linkseal hub prune --db hub.db --keys hub.keys --config hub.toml"])
    prune.add_argument("--db", required=True, type=Path)
    prune.add_argument("--config", type=Path, help="hub.toml with a [retention] table (default: the defaults)")
    add_keys_option(prune, help_text="the hub's key file: a store sealed by `hub run` is written only with it",
                    required=False)
    prune.set_defaults(run=_prune)

    audit = command(sub, "audit", "Check a hub store: SQLite's full integrity check, the hash chain of the security "
                    "events, and the seals over every other table (keyed: give the hub's key file to check that "
                    "nobody without it recomputed them). Reads only; works on a read-only copy.",
                    ["linkseal hub audit --db hub.db --keys hub.keys", "linkseal hub audit --db copy-of-hub.db",
                     "linkseal hub audit --db postgresql://db.plant/linkseal"])
    audit.add_argument("--db", required=True, help="the hub's SQLite file, or the workers' postgresql://...")
    add_keys_option(audit, help_text="the hub's key file, to check the keyed seals", required=False)
    audit.set_defaults(run=_audit)

    topology = command(sub, "topology", "Declare, over AMQP, what hub workers consume on RabbitMQ: a consistent-hash "
                       "exchange bound to amq.topic for records, N quorum queues with a single active consumer "
                       "each, and the queue status messages take. Idempotent.",
                       ["linkseal hub topology --broker amqp://127.0.0.1:5672 --partitions 16"])
    topology.add_argument("--broker", required=True, help="amqp://HOST:PORT[/VHOST]")
    topology.add_argument("--partitions", required=True, type=Number(int, 1, 1024),
                          help="number of partition queues (devices are spread over them by a hash of their id)")
    topology.add_argument("--username", help="AMQP user name; the password comes from LINKSEAL_MQTT_PASSWORD or "
                          "--password-file")
    topology.add_argument("--password-file", help="file holding the AMQP password")
    topology.set_defaults(run=_topology)

    broker = command(sub, "broker-config", "Write a Mosquitto 2.x configuration (ACL, accounts, limits) that lets "
                     "each device publish only as itself and the hub only read.",
                     ["linkseal hub broker-config --keys hub.keys --out /etc/mosquitto/linkseal",
                      "linkseal hub broker-config --keys hub.keys --out broker/ --tls --ca ca/ --host broker.plant"])
    add_keys_option(broker)
    broker.add_argument("--out", required=True, type=Path, help="directory for mosquitto.conf, acl, passwords")
    broker.add_argument("--port", type=PORT, help="listener port (default 1883, or 8883 with --tls)")
    broker.add_argument("--tls", action="store_true", help="a TLS listener that requires client certificates")
    broker.add_argument("--ca", type=Path, help="CA directory (with --tls)")
    broker.add_argument("--host", action="append", help="the broker's host name or address for its certificate "
                        "(repeatable; default localhost and 127.0.0.1)")
    broker.add_argument("--data-dir", type=Path, help="Mosquitto persistence directory (default /var/lib/mosquitto)")
    broker.add_argument("--bind", metavar="ADDRESS", help="the listener's address (default: 127.0.0.1 without --tls, "
                        "where passwords cross in clear; every interface with --tls)")
    broker.add_argument("--rabbitmq", action="store_true",
                        help="instead: RabbitMQ accounts for hub workers and devices (definitions.json for "
                             "`rabbitmqctl import_definitions`; docs/scale-out.md)")
    broker.add_argument("--forward-here", action="store_true",
                        help="the hub forwards authentic records to this broker (--forward mqtt://...): an account "
                             "linkseal/forwarder for the hub's sink that may write linkseal/verified/#, and a "
                             "read-only account linkseal/consumer for them")
    broker.add_argument("--relay", action="append", metavar="NAME[=DEVICE,...]",
                        help="an account linkseal/relay/NAME for a keyless relay (docs/relay.md) that may write only "
                             "the topics of the devices it carries (default: every device on rs485 or ble); "
                             "repeatable")
    broker.set_defaults(run=_broker_config)


def _console_options(parser, option, help_text):
    parser.add_argument(option, dest="console", type=host_port, help=help_text)
    parser.add_argument("--console-token-file", help="file holding the token browsers must send "
                        "(Authorization: Bearer); required off loopback")
    parser.add_argument("--console-tls-cert", help="the console's TLS certificate (PEM); required off loopback")
    parser.add_argument("--console-tls-key", help="its private key (PEM)")


def start_console(args, db_path):
    """The console of --console/--listen, serving; None when not asked for. Off loopback it
    needs TLS and a token, or it is refused (exit 2) before anything listens."""
    from hub.service.console.server import ConsoleServer, is_loopback

    host, port = args.console
    tls = (args.console_tls_cert, args.console_tls_key) if args.console_tls_cert or args.console_tls_key else None
    if tls and not all(tls):
        raise InputError("--console-tls-cert and --console-tls-key go together")
    token = None
    if args.console_token_file:
        try:
            token = Path(args.console_token_file).read_text().strip()
        except OSError as exc:
            raise InputError(f"--console-token-file {args.console_token_file}: {exc.strerror}") from None
        if len(token) < 16:
            raise InputError(f"--console-token-file {args.console_token_file}: the token is shorter than 16 "
                             "characters")
        if Path(args.console_token_file).stat().st_mode & 0o077:
            raise InputError(f"--console-token-file {args.console_token_file}: readable by others than its owner; "
                             f"chmod 600 {args.console_token_file}")
    if not is_loopback(host) and not (tls and token):
        raise InputError(f"console on {host}: off loopback it needs TLS (--console-tls-cert, --console-tls-key) and "
                         "a token (--console-token-file); or keep it on 127.0.0.1 and reach it through an SSH tunnel "
                         "(docs/deploy-bastion.md)")
    try:
        return ConsoleServer(db_path, host, port, token, tls).start()
    except OSError as exc:
        raise InputError(f"console {host}:{port}: cannot listen ({exc})") from None


def _console_from_settings(args, settings) -> None:
    """hub.toml [console] for what the command line left unset."""
    import argparse

    if args.console is None and settings.console_listen:
        try:
            args.console = host_port(settings.console_listen)
        except argparse.ArgumentTypeError as exc:
            raise InputError(f"{args.config}: [console] listen {exc}") from None
    for name in ("console_token_file", "console_tls_cert", "console_tls_key"):
        if getattr(args, name) is None and getattr(settings, name):
            setattr(args, name, getattr(settings, name))


def _console(args):
    if _is_postgres(args.db):
        from hub.service.storage.postgres import ensure_schema

        ensure_schema(args.db)  # StorageError (exit 2) when PostgreSQL cannot be reached
    elif not Path(args.db).is_file():
        raise InputError(f"{args.db}: no such hub database")
    args.console = args.console or ("127.0.0.1", 8088)
    server = start_console(args, args.db)
    scheme = "https" if args.console_tls_cert else "http"
    print(f"console on {scheme}://{server.address}/ (read-only); Ctrl-C to stop", flush=True)
    serve_until_stopped(server)
    return 0


def serve_until_stopped(server) -> None:
    """Until Ctrl-C or SIGTERM. Set explicitly: a process started in the background by a shell
    inherits SIGINT ignored, and Python would then never raise KeyboardInterrupt."""
    import threading

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop()


def _verifier(args, rate_limits=None, require_encryption=()):
    from hardware.link_registry import links_by_code
    from hub.core.verifier import Verifier

    keyfile = open_keyfile(args)
    return Verifier(keyfile.device_keys(), {code: link.name for code, link in links_by_code().items()}, rate_limits,
                    require_encryption)


def _verify(args):
    from hardware.link_registry import load_links
    from hub.core.report import build_report, write_json
    from hub.core.watch import Watch
    from hub.service.config import load_settings
    from shared.capture import EventSpool, read_capture
    from hub.table import print_report

    settings = load_settings(args.config, load_links())
    verifier = _verifier(args, require_encryption=settings.require_encryption)
    # Liveness and behaviour on the capture's times: the same events as the live hub's, every time.
    watch = Watch(verifier.record_event, verifier.status, **settings.watch_options())
    events = EventSpool()  # memory independent of the capture's size: events go to disk
    try:
        for t, topic, payload in read_capture(args.capture):
            watch.tick(t)
            watch.observe(verifier.verify_message(topic, payload, t), t)
            if len(verifier.events) >= 1000:
                events.extend(verifier.drain_events())
        events.extend(verifier.drain_events())
        report = build_report(verifier, events)
        if args.json:
            write_json(report, sys.stdout)
        else:
            print_report(report, Console(width=80), devices=args.devices)
    finally:
        events.close()


def _require_bound_client_ids(broker, log) -> None:
    """With the account `hub broker-config` generates, refuse a broker that lets any login take
    any client id: a device's credentials could take the hub's session and its queued records."""
    from hub.keys.keyfile import HUB_MQTT_USER
    from hub.service.ways_in.broker_probe import ProbeFailed, client_ids_bound

    if broker.username != HUB_MQTT_USER:
        return
    try:
        bound = client_ids_bound(broker)
    except ProbeFailed as exc:  # the hub waits for the broker as always; checked only when reachable
        log("client_id_binding_unchecked", broker=f"{broker.host}:{broker.port}", error=str(exc))
        return
    if not bound:
        raise InputError(f"the broker at {broker.host}:{broker.port} does not bind client ids to accounts: any device's "
                         "login could take the hub's session and the records queued in it. Regenerate its "
                         "configuration with `linkseal hub broker-config` (it sets use_username_as_clientid true) "
                         "and restart it")
    log("client_ids_bound", broker=f"{broker.host}:{broker.port}")


def _run(args):
    from hardware.link_registry import load_links
    from hub.service.config import load_settings
    from hub.service.ingest import Ingest
    from shared.log import EventLog
    from hub.service.metrics import HubMetrics
    from hub.service.ways_in.mqtt_adapter import HubService
    from hub.service.storage.sqlite import WriterLock

    if args.broker.startswith("amqp://"):
        return _run_worker(args)
    if _is_postgres(args.db):
        raise InputError("--db postgresql://... is for hub workers on RabbitMQ: give an amqp:// --broker")
    args.db = Path(args.db)
    broker = broker_from_args(args)
    settings = load_settings(args.config, load_links())
    log = EventLog(json_lines=args.log_json or settings.log_json)
    verifier = _verifier(args, settings.rate_limits, settings.require_encryption)
    sinks = _sinks(args.forward, settings)
    lock = WriterLock(args.db)  # one writer per database, for as long as this hub runs
    storage = _open_waiting(args.db, log, seal_key=open_keyfile(args).seal_key())
    storage.require_sound()
    for name in storage.set_sinks([name for name, _ in sinks]):
        log("sink_forgotten", sink=name, reason="no longer configured: it holds no records back any more")
    ingest = Ingest(verifier, storage, watch_options=settings.watch_options())
    _console_from_settings(args, settings)
    if args.console:
        console = start_console(args, args.db)
        log("console", address=console.address)
    metrics = HubMetrics(verifier, ingest.watch)
    if args.metrics:
        try:
            metrics.address = metrics.serve(*args.metrics)
        except OSError as exc:
            raise InputError(f"--metrics {':'.join(map(str, args.metrics))}: cannot listen ({exc})") from None
    reload = lambda: open_keyfile(args).device_keys()  # noqa: E731  (SIGHUP)
    lorawan = _lorawan(args.lorawan, settings)
    _require_bound_client_ids(broker, log)
    try:
        return HubService(broker, settings, ingest, log, metrics, load_devices=reload, sinks=sinks, lorawan=lorawan,
                          load_euis=lambda: open_keyfile(args).devices_by_eui()).run()
    finally:
        lock.release()


def _is_postgres(db: str) -> bool:
    return db.startswith(("postgresql://", "postgres://"))


def _amqp_parameters(args):
    from hub.service.ways_in.amqp_worker import amqp_parameters

    password = os.environ.get("LINKSEAL_MQTT_PASSWORD")
    if args.password_file:
        try:
            password = Path(args.password_file).read_text().strip()
        except OSError as exc:
            raise InputError(f"--password-file {args.password_file}: {exc.strerror}") from None
    return amqp_parameters(args.broker, args.username, password)


def _run_worker(args):
    """A hub worker: RabbitMQ partitions in, PostgreSQL state (hub/service/ways_in/amqp_worker.py)."""
    from hardware.link_registry import links_by_code, load_links
    from hub.core.verifier import Verifier
    from hub.service.ways_in.amqp_worker import Worker
    from hub.service.config import load_settings
    from shared.log import EventLog

    if not _is_postgres(args.db):
        raise InputError("--broker amqp://... runs a hub worker, whose state is shared in PostgreSQL: give "
                         "--db postgresql://...")
    for option, value in (("--forward", args.forward), ("--console", args.console), ("--ca-file", args.ca_file),
                          ("--cert-file", args.cert_file),
                          ("--key-file", args.key_file)):
        if value:
            raise InputError(f"{option} is not supported by hub workers yet (docs/scale-out.md)")
    parameters = _amqp_parameters(args)
    settings = load_settings(args.config, load_links())
    log = EventLog(json_lines=args.log_json or settings.log_json)
    devices = open_keyfile(args).device_keys()  # read once, before anything is consumed
    names = {code: link.name for code, link in links_by_code().items()}
    worker = Worker(parameters, args.db, lambda keys: Verifier(keys, names, settings.rate_limits, settings.require_encryption), devices, settings,
                    log, load_devices=lambda: open_keyfile(args).device_keys())
    if args.metrics:
        from hub.service.metrics import serve_worker_metrics

        try:
            address = serve_worker_metrics(worker, *args.metrics)
        except OSError as exc:
            raise InputError(f"--metrics {':'.join(map(str, args.metrics))}: cannot listen ({exc})") from None
        log("metrics", address=address)
    signal.signal(signal.SIGTERM, lambda *_: worker.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: worker.stopping.set())
    signal.signal(signal.SIGHUP, lambda *_: worker.reload.set())  # the key file again
    return worker.run()


def _topology(args):
    from hub.service.ways_in.amqp_worker import declare

    print(declare(_amqp_parameters(args), args.partitions))


def _open_waiting(path, log, backoff_max=30.0, seal_key=None):
    """The hub's database; a full, locked or read-only one is waited for (logged once), not
    exited on: a service manager restarting the hub in a loop would not free the disk."""
    from hub.service.storage.sqlite import SQLiteStorage, StorageFault

    delay, reported = 0.5, None
    while True:
        try:
            storage = SQLiteStorage(path, seal_key=seal_key)
        except StorageFault as exc:
            if exc.kind != reported:
                log(exc.kind, error=str(exc), action="waiting for the database before connecting to the broker")
                reported = exc.kind
            time.sleep(delay)  # SIGTERM still ends the process: nothing is held yet
            delay = min(delay * 2, backoff_max)
            continue
        if reported:
            log("storage_recovered", after=reported)
        return storage


def _lorawan(urls, settings) -> list:
    """(server, broker) for --lorawan URLs and hub.toml [[lorawan]] tables (their logins and CA)."""
    from hub.service.config import parse_lorawan

    tables = [{"url": url} for url in urls or ()] + settings.lorawan
    return [parse_lorawan(table["url"], table.get("ca_file"), table.get("username"), table.get("password_file"))
            for table in tables]


def _sinks(urls, settings) -> list:
    """(name, sink) for --forward URLs and hub.toml [[forward]] tables; the names must differ."""
    from hub.service.config import FORWARD_OPTIONS
    from hub.service.delivery.sinks import open_sink, sink_name

    tables = [{"url": url} for url in urls] + settings.forwards
    sinks = []
    for number, table in enumerate(tables):
        name = sink_name(table["url"])
        if any(name == other for other, _ in sinks):
            raise InputError(f"--forward {name}: configured twice")
        options = {key: table.get(key) for key in FORWARD_OPTIONS}
        sinks.append((name, open_sink(table["url"], f"{settings.client_id}-forward-{number}", **options)))
    return sinks


def _report(args):
    from hub.core.report import build_stored_report, to_json
    from hub.service.storage.sqlite import SQLiteStorage
    from hub.table import print_report

    since = time.time() - args.since if args.since is not None else None
    if _is_postgres(args.db):
        from hub.service.storage.postgres import PostgresReader

        storage = PostgresReader(args.db)
    else:
        storage = SQLiteStorage(Path(args.db), create=False)
    try:
        storage.require_sound()
        report = build_stored_report(storage, since, args.link)
    finally:
        storage.close()
    if args.json:
        print(to_json(report))
    else:
        print_report(report, Console(width=80), devices=args.devices)


def _prune(args):
    from hardware.link_registry import load_links
    from hub.service.config import load_settings
    from hub.service.storage.sqlite import SQLiteStorage, WriterLock

    retention = load_settings(args.config, load_links()).retention
    if not args.db.is_file():
        raise InputError(f"{args.db}: no such hub database")
    lock = WriterLock(args.db)  # not beside a running hub
    seal_key = open_keyfile(args).seal_key() if args.keys else None
    try:
        storage = SQLiteStorage(args.db, create=False, seal_key=seal_key)
    except BaseException:
        lock.release()
        raise
    total = {}
    try:
        while True:
            done = storage.prune_step(time.time(), retention, limit=20000)
            if not any(done.values()):
                break
            for key, value in done.items():
                total[key] = total.get(key, 0) + value
        released = storage.release_space()
    finally:
        storage.close()
        lock.release()
    print(f"pruned {total.get('records', 0)} records, {total.get('events', 0)} security events, "
          f"{total.get('device_counts', 0)} per-device counter rows; rolled up {total.get('counts_rolled', 0)} "
          f"counter rows; {released} bytes handed back")


def _audit(args):
    """SQLite's integrity check, the security events' hash chain and the seals over every other
    table, through a read-only connection (a copy on read-only media works); exit status 1 when
    anything is wrong."""
    from hub.service.storage.sqlite import SQLiteReader

    if _is_postgres(args.db):
        return _audit_postgres(args.db)
    seal_key = open_keyfile(args).seal_key() if args.keys else None
    reader = SQLiteReader.read_only(Path(args.db))
    try:
        damage = reader.integrity_problem(full=True)
        try:
            checked, broken = reader.audit()
            try:
                anchor_id, anchor_hash = reader.events_anchor()
            except ValueError:  # audit() said so already
                anchor_id, anchor_hash = 0, ""
            unsealed = reader.seal_problems(seal_key)
            pruned = reader.pruned_records_upto()
            keyed = reader.seal_key_id() is not None
        except sqlite3.DatabaseError as exc:  # too damaged to read
            checked, broken, anchor_id, unsealed, pruned, keyed = 0, f"unreadable ({exc})", 0, [], 0, False
    finally:
        reader.close()
    start = (f"from the pruning anchor (events 1-{anchor_id} pruned; anchor hash {anchor_hash[:16]}...)"
             if anchor_id else "from the first event")
    print(f"BROKEN: SQLite integrity check: {damage}" if damage else "OK: SQLite integrity check (full)")
    note = f" (records 1-{pruned} were pruned by retention)" if pruned else ""
    failed = _print_audit(checked, broken, f"hash chain intact {start}", f" {start}", unsealed,
                          "records, counters, device state, link counters, device status, sink cursors and the "
                          f"store's marks match their seals{note}")
    if keyed and seal_key is None:
        print("NOT CHECKED: the seals are keyed; without --keys this audit cannot tell them from seals someone "
              "recomputed after editing the file")
    elif keyed:
        print("OK: the seals are the hub's (keyed sum checked). Whoever holds the key file could still rewrite "
              "rows and seals alike, and an older copy of the whole store passes as it was")
    else:
        print("NOT KEYED: these seals catch damage and careless edits; anyone who can write the file and knows the "
              "format could recompute them (`hub run` keys a store with its key file)")
    return 1 if damage or failed else 0


def _print_audit(checked, broken, chain_ok: str, chain_where: str, problems, tables_ok: str) -> bool:
    """The audit's lines on the event chain and the other tables; True when anything is broken."""
    if broken:
        print(f"BROKEN after {checked} intact events checked{chain_where}: {broken}")
    else:
        print(f"OK: {checked} events in the chain (every stored event: security, device status and link health; "
              f"`hub report` lists them by kind), {chain_ok}")
    for problem in problems:
        print(f"BROKEN: {problem}")
    if not problems:
        print(f"OK: {tables_ok}")
    return bool(broken or problems)


def _rabbitmq_config(args):
    from hub.keys.rabbitmq_config import WORKER_USER, write_rabbitmq_config

    for option, value in (("--tls", args.tls), ("--ca", args.ca), ("--port", args.port), ("--host", args.host),
                          ("--data-dir", args.data_dir), ("--forward-here", args.forward_here), ("--bind", args.bind)):
        if value:
            raise InputError(f"{option} is for the Mosquitto configuration, not with --rabbitmq")
    files = write_rabbitmq_config(open_keyfile(args), args.out)
    print(f"wrote {', '.join(str(path) for path in files.values())}")
    print(f"load the accounts with `rabbitmqctl import_definitions {files['definitions']}`, append "
          f"{files['conf']} to rabbitmq.conf; run the workers with --username {WORKER_USER} "
          f"--password-file {files['hub_password']}")


def _audit_postgres(url):
    """The workers' security-event chains and the tables' agreement; exit status 1 when either fails."""
    from hub.service.storage.postgres import PostgresReader

    reader = PostgresReader(url)
    try:
        checked, broken = reader.audit()
        problems = reader.consistency_problems()
    finally:
        reader.close()
    failed = _print_audit(checked, broken, "every partition's hash chain intact from its first event", "", problems,
                          "device and link counters equal the sums of their per-minute counts, and each device's "
                          "stored records its valid frames")
    print("NOT CHECKED: seals (digests a row edited together with its sums would not escape) are kept by the "
          "SQLite hub only so far")
    return 1 if failed else 0


def _broker_config(args):
    from hub.keys.broker_config import write_broker_config
    from hub.service.delivery.sinks import largest_verified_message

    if args.rabbitmq:
        return _rabbitmq_config(args)
    if args.tls and args.ca is None:
        raise InputError("--tls needs --ca DIR (create one with `linkseal keys ca init --dir DIR`)")
    from agent.sealer import check_device_id

    keyfile = open_keyfile(args)
    relays = {}
    for item in args.relay or ():
        name, _, devices = item.partition("=")
        try:
            check_device_id(name)
        except ValueError as exc:
            raise InputError(f"--relay {item!r}: the name: {exc}") from None
        relays[name] = [d.strip() for d in devices.split(",") if d.strip()] or None
    try:
        files = write_broker_config(keyfile, args.out, port=args.port, tls=args.tls, ca_dir=args.ca,
                                    server_hosts=tuple(args.host or ("localhost", "127.0.0.1")),
                                    data_dir=args.data_dir, bind=args.bind, relays=relays,
                                    forward_here=largest_verified_message() if args.forward_here else None)
    except ValueError as exc:
        if not str(exc).startswith("--relay"):
            raise
        raise InputError(str(exc)) from None
    print(f"wrote {', '.join(str(path) for path in files.values())}")
    if not args.tls:
        loopback = ("127.0.0.1 (loopback only: plain MQTT carries passwords in clear; use --tls, or --bind ADDRESS "
                    "on a network you trust)")
        print(f"the listener binds {args.bind or loopback}")
    if "hub_password" in files:
        print(f"run the hub with --username linkseal/hub --password-file {files['hub_password']}")
    if "forwarder_password" in files:
        print(f"the hub's [[forward]] sink to this broker logs in as linkseal/forwarder with password_file = "
              f"{files['forwarder_password']}")
    for name in relays:
        login = (f"--username linkseal/relay/{name} --password-file {files[f'relay_{name}_password']}"
                 if not args.tls else f"--cert-file {files[f'relay_{name}_cert']} --key-file {files[f'relay_{name}_key']}")
        print(f"relay {name} logs in as linkseal/relay/{name}: linkseal relay serial ... --name {name} {login}")
    if "consumer_password" in files:
        print(f"consumers of linkseal/verified/# log in as linkseal/consumer with the password in "
              f"{files['consumer_password']}")
