"""`linkseal sim ...`: run, record and replay link faults and attacks; capture for `hub verify`."""

from pathlib import Path

from rich.console import Console

from hub.cli_common import SEED, InputError, Number, command, host_port, new_keyfile

ATTACK_HELP = "attacks and counts, e.g. tamper=3,replay_old=2,flood=100 (default: every kind), or none"


def add_sim_group(groups):
    sim = groups.add_parser("sim", help="simulated link faults and attacks, with ground truth")
    sub = sim.add_subparsers(dest="command", required=True)

    run = command(sub, "run", "Devices on the chosen links publish through fault models (and attacks) to the hub; "
                  "ends with injected vs measured per link and writes report.json, capture, trace and PNG plots.",
                  ["linkseal sim run --devices 12 --links wifi,lora,fiber --duration 60 --rate 5 --seed 7 "
                   "--no-broker --out sim-out",
                   "linkseal sim run --scenario bench.toml --broker mqtt://127.0.0.1:1883 --out sim-out",
                   "linkseal sim run --virtual-devices 3 --links wifi,lora --duration 30 --no-broker --out sim-out",
                   "linkseal sim run --links lora --lorawan chirpstack --devices 6 --duration 10800 --rate 0.0167 "
                   "--out sim-lora"])
    _scenario_options(run)
    _broker_options(run)
    run.add_argument("--virtual-devices", type=Number(int, 1, 64), metavar="N",
                     help="run the real firmware on N virtual MicroPython boards instead of simulated agents, "
                          "through a fault proxy per link type (--duration is then wall-clock seconds)")
    run.add_argument("--lorawan", choices=("chirpstack", "ttn"),
                     help="LoRaWAN devices through emulated modems (duty cycle, payload per data rate), several "
                          "gateways each and a network server publishing ChirpStack or TTN events that hub run "
                          "--lorawan reads; compares the radio figures with the truth (--links lora only)")
    run.add_argument("--anomalies", nargs="?", const="all", metavar="KINDS",
                     help="days of paced device traffic (births, heartbeats, daily cycles, link faults) with "
                          "injected anomalies (silence, flood, exfiltration, reconnect_storm, drift, clean_stop; "
                          "default all; none for a normal run) against the hub's liveness and behaviour watch, in "
                          "process; defaults then: 48 devices on all eight link types for 2 days")
    run.add_argument("--out", type=Path, default=Path("sim-out"), help="output directory (default sim-out)")
    run.set_defaults(run=_run)

    record = command(sub, "record", "Write a fault trace without verifying: from the fault models, or from an "
                     "observed loss pattern (one 1/0 per frame) replayed against newly sealed frames.",
                     ["linkseal sim record --devices 4 --links lora --duration 120 --out lora.trace.jsonl",
                      "linkseal sim record --loss-pattern field-lora.txt --links lora --out field.trace.jsonl"])
    _scenario_options(record)
    record.add_argument("--loss-pattern", type=Path, help="file of 1 (received) and 0 (lost), one per frame")
    record.add_argument("--out", type=Path, required=True, help="trace file to write")
    record.set_defaults(run=_record)

    replay = command(sub, "replay", "Re-apply a trace exactly: the same capture, bit for bit, and the same report.",
                     ["linkseal sim replay sim-out/trace.jsonl --out replayed"])
    replay.add_argument("trace", type=Path)
    replay.add_argument("--keys", type=Path, help="hub key file for traces of real devices (`sim proxy`)")
    replay.add_argument("--insecure-plaintext", action="store_true", help="allow a plaintext key file")
    _broker_options(replay)
    replay.add_argument("--out", type=Path, default=Path("sim-replay"), help="output directory")
    replay.set_defaults(run=_replay)

    proxy = command(sub, "proxy", "An MQTT-aware TCP proxy that applies a link profile to PUBLISH packets between "
                    "devices and the broker (drop, corrupt, duplicate, delay, reorder, outages) and writes a trace.",
                    ["linkseal sim proxy --listen 127.0.0.1:1884 --upstream 127.0.0.1:1883 --profile wifi",
                     "linkseal sim proxy --listen :1884 --upstream broker:1883 --profile lora --set loss_rate=0.2 "
                     "--set loss=bernoulli --outage 60:20 --trace bench.trace.jsonl"])
    proxy.add_argument("--listen", required=True, type=host_port,
                       help="HOST:PORT devices connect to (port 0: any free port)")
    proxy.add_argument("--upstream", required=True, type=host_port, help="HOST:PORT of the broker")
    proxy.add_argument("--profile", required=True, help="link type from hardware/links")
    proxy.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a profile setting (loss, loss_rate, p, r, ber, burst_rate, duplicate, "
                            "delay_ms, jitter_ms, rate_limit)")
    proxy.add_argument("--outage", action="append", default=[], metavar="START:DURATION",
                       help="seconds after start: cut every connection for DURATION seconds")
    proxy.add_argument("--seed", type=SEED, default=1)
    proxy.add_argument("--trace", type=Path, default=Path("proxy.trace.jsonl"), help="trace file to write")
    proxy.set_defaults(run=_proxy)

    capture = command(sub, "capture", "Write a run's arrivals as a capture file (`hub verify`'s input), with a "
                      "hub key file for its devices (encrypted unless --insecure-plaintext).",
                      ["linkseal sim capture --out run.jsonl --keys-out run.keys --duration 120 --seed 7"])
    _scenario_options(capture)
    capture.add_argument("--out", required=True, type=Path, help="capture file to write")
    capture.add_argument("--keys-out", required=True, type=Path, help="hub key file to write for its devices")
    capture.add_argument("--insecure-plaintext", action="store_true", help="do not encrypt the key file")
    capture.set_defaults(run=_capture)


def add_demo_command(groups):
    demo = command(groups, "demo", "A dozen devices on six link types, with link faults and attacks, through an "
                   "embedded MQTT broker to the hub: per-link tables, security events, report and plots.",
                   ["linkseal demo", "linkseal demo --no-broker --out /tmp/demo"])
    demo.add_argument("--seed", type=SEED, default=7)
    demo.add_argument("--no-broker", action="store_true", help="feed the hub core directly (no MQTT)")
    demo.add_argument("--out", type=Path, default=Path("demo-out"), help="where report, capture and plots go")
    demo.add_argument("--console", nargs="?", const=("127.0.0.1", 8088), type=host_port, metavar="HOST:PORT",
                      help="then serve the hub's read-only console over the demo's database until Ctrl-C "
                           "(default 127.0.0.1:8088)")
    demo.set_defaults(run=_demo)


def _broker_options(parser):
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--no-broker", action="store_true", help="feed the hub core directly (fastest)")
    where.add_argument("--broker", help="publish through this broker (mqtt://HOST:PORT); default: an embedded "
                       "amqtt broker started in-process")


def _scenario_options(parser):
    parser.add_argument("--scenario", type=Path, help="scenario TOML (devices, links, duration, rate, seed, "
                        "[attacks], [profiles.LINK]); options given here override it")
    parser.add_argument("--devices", type=Number(int, 1, 1_000_000), help="number of devices (default 12)")
    parser.add_argument("--links", help="comma-separated link types (default fiber,twisted-pair,coax,wifi,ble,lora)")
    parser.add_argument("--duration", type=Number(float, 0.001, 1e7, " s"), help="simulated seconds (default 60)")
    parser.add_argument("--rate", type=Number(float, 0.001, 1e4, " frames/s"),
                        help="frames per second per device (default 5)")
    parser.add_argument("--seed", type=SEED, help="random seed (default 7)")
    parser.add_argument("--attacks", help=ATTACK_HELP)
    parser.add_argument("--set", action="append", default=[], metavar="LINK.KEY=VALUE",
                        help="override a link profile, e.g. wifi.loss_rate=0.05 or lora.jitter_dist=exponential "
                             "(docs/simulator.md lists the keys)")
    parser.add_argument("--profile-from", type=Path, metavar="REPORT",
                        help="take each link's loss model from the Gilbert-Elliott fit (ge_fit) of a hub report "
                             "(hub report --json, hub verify --json): measure a link, then simulate it; --set wins")


def _scenario(args):
    from .run import Scenario, ScenarioError, load_scenario

    overrides = {"devices": args.devices, "duration": args.duration, "rate": args.rate, "seed": args.seed,
                 "links": tuple(args.links.split(",")) if args.links else None, "attacks": _attacks(args.attacks)}
    try:
        if args.scenario:
            scenario = load_scenario(args.scenario, **overrides)
        else:
            scenario = Scenario(**{k: v for k, v in overrides.items() if v is not None})
        fitted = _fitted_profiles(args.profile_from) if args.profile_from else {}
        for link, settings in list(fitted.items()) + list(_profile_overrides(args.set).items()):
            scenario.profiles[link] = {**scenario.profiles.get(link, {}), **settings}
        scenario.check()
        return scenario
    except (ScenarioError, TypeError) as exc:
        raise InputError(str(exc)) from None


def _fitted_profiles(path: Path) -> dict:
    """link -> netem Gilbert-Elliott settings, from the fitted links of a hub report."""
    import json

    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        links = (report["hub"] if "hub" in report else report)["links"]  # a sim run's report.json, or the hub's
        fits = {name: entry["ge_fit"] for name, entry in links.items() if entry.get("ge_fit")}
        profiles = {name: {"loss": "gilbert", "p": fit["p"], "r": fit["r"], "one_minus_h": fit["loss_in_bad"],
                           "one_minus_k": fit["loss_in_good"]} for name, fit in fits.items()}
    except OSError as exc:
        raise InputError(f"--profile-from {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"--profile-from {path}: not a linkseal report with ge_fit entries ({exc!r})") from None
    if not profiles:
        unfitted = {name: entry.get("ge_fit_reason") for name, entry in links.items()}
        raise InputError(f"--profile-from {path}: no link in it has a Gilbert-Elliott fit ({unfitted})")
    return profiles


def _profile_overrides(items) -> dict:
    from .faults import check_ranges

    profiles = {}
    for item in items:
        name, _, value = item.partition("=")
        link, _, key = name.partition(".")
        if not (link and key and value):
            raise InputError(f"--set {item!r}: expected LINK.KEY=VALUE, e.g. wifi.loss_rate=0.05")
        try:
            parsed = value if key in ("loss", "jitter_dist") else int(value) if key == "burst_bits" else float(value)
        except ValueError:
            raise InputError(f"--set {item!r}: the value must be a number") from None
        try:
            check_ranges(link, {key: parsed})
        except ValueError as exc:
            raise InputError(f"--set {item!r}: {exc}") from None
        profiles.setdefault(link, {})[key] = parsed
    return profiles


def _attacks(text):
    if text is None:
        return None
    if text == "none":
        return {}
    attacks = {}
    for item in text.split(","):
        kind, _, count = item.partition("=")
        try:
            attacks[kind.strip()] = int(count) if count else 1
        except ValueError:
            raise InputError(f"--attacks {item!r}: the count must be a whole number") from None
        if attacks[kind.strip()] < 0:
            raise InputError(f"--attacks {item!r}: the count must be 0 or more")
    return attacks


def _verify(generated, labelled, no_broker: bool, broker_url, out_dir, console):
    """The hub's report and its outcome per arrival: from the hub core directly, or through a
    broker (broker_url, or an embedded one when None) to the hub service."""
    from .run import verify_in_process

    if no_broker:
        return verify_in_process(generated.devices, labelled)
    from .broker_run import verify_through_broker

    return verify_through_broker(generated.devices, labelled, broker_url, out_dir, console)


def _finish(generated, header, events, labelled, ledger, hub, outcomes, out_dir, console):
    from hub.table import print_report

    from .compare import compare, print_comparison
    from .run import write_outputs

    comparison = compare(generated, ledger.report(), hub, labelled, outcomes)
    paths = write_outputs(out_dir, header, events, labelled, hub, comparison)
    print_report(hub, console)
    print_comparison(comparison, console)
    console.print(f"Wrote {paths['report']}, {paths['capture']}, {paths['trace']} and "
                  f"{len(paths['plots'])} plots in {out_dir}.", highlight=False)
    return 0 if comparison["counters_match_truth"] and comparison.get("attacks_accepted", 0) == 0 else 1


def _run(args):
    from .run import generate, label

    console = Console(width=80)
    if args.anomalies is not None:
        return _run_anomalies(args, console)
    if args.lorawan:
        return _run_lorawan(args, console)
    scenario = _scenario(args)
    if args.virtual_devices:
        return _run_virtual(args, scenario, console)
    with console.status("generating traffic through the fault models..."):
        generated = generate(scenario)
        labelled, ledger = label(generated.events, generated.device_links)
    hub, outcomes = _verify(generated, labelled, args.no_broker, args.broker, args.out, console)
    return _finish(generated, generated.header(), generated.events, labelled, ledger, hub, outcomes, args.out,
                   console)


def _run_anomalies(args, console) -> int:
    import json

    from hardware.link_registry import load_links

    from .anomalies import KINDS
    from .anomaly_check import judge, print_judgement, run

    given = [f"--{name.replace('_', '-')}" for name in ("scenario", "rate", "attacks", "profile_from", "lorawan",
                                                        "virtual_devices", "broker") if getattr(args, name)]
    if given or args.set:
        raise InputError(f"--anomalies runs paced devices through the hub core in process: drop "
                         f"{', '.join(given + ['--set'] * bool(args.set))}")
    kinds = () if args.anomalies == "none" else KINDS if args.anomalies == "all" else tuple(args.anomalies.split(","))
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown:
        raise InputError(f"--anomalies {unknown[0]!r}: not an anomaly (known: {', '.join(KINDS)}, all, none)")
    links = tuple(args.links.split(",")) if args.links else tuple(sorted(load_links()))
    unknown = [link for link in links if link not in load_links()]
    if unknown:
        raise InputError(f"--links {unknown[0]!r}: not a link type in hardware/links")
    devices, duration, seed = args.devices or 48, args.duration or 2 * 86400.0, 7 if args.seed is None else args.seed
    if devices < len(kinds):
        raise InputError(f"--devices {devices}: each of the {len(kinds)} anomalies needs a device of its own")
    try:
        with console.status(f"{devices} devices for {duration / 3600:g} h through the hub's watch..."):
            result = run(seed, devices, links, duration, kinds)
    except ValueError as exc:  # too short a run for the anomalies asked for
        raise InputError(f"--duration {duration:g}: {exc}") from None
    judgement = judge(result)
    args.out.mkdir(parents=True, exist_ok=True)
    header = {"seed": seed, "devices": devices, "links": list(links), "duration": duration, "anomalies": list(kinds),
              "paces": [vars(pace) for pace in result["paces"]]}
    report = args.out / "report.json"
    report.write_text(json.dumps({"scenario": header, "anomalies": judgement, "hub": result["report"]}, indent=2,
                                 sort_keys=True) + "\n")
    print_judgement(judgement, console)
    console.print(f"Wrote {report}.", highlight=False)
    return 0 if judgement["all_detected"] and judgement["false_alarms_per_1000_device_days"] <= 1.0 else 1


def _run_lorawan(args, console):
    import json

    from hub.keys.keyfile import KeyFile

    from .lorawan.run import LorawanScenario, compare, generate, print_comparison, verify

    if args.links not in (None, "lora") or args.virtual_devices or args.scenario or args.attacks or args.set \
            or args.profile_from:
        raise InputError("--lorawan: LoRa devices only (--links lora), without --virtual-devices, --scenario, "
                         "--attacks, --set or --profile-from")
    scenario = LorawanScenario(server=args.lorawan, **{k: v for k, v in (
        ("devices", args.devices), ("duration", args.duration), ("rate", args.rate), ("seed", args.seed))
        if v is not None})
    args.out.mkdir(parents=True, exist_ok=True)
    keys = args.out / "hub.keys"
    keys.unlink(missing_ok=True)
    keyfile = KeyFile.create(keys)  # the simulated devices' keys, plaintext (mode 0600): a simulation's
    with console.status("LoRaWAN devices, modems, gateways and the network server at work..."):
        messages, truth = generate(scenario, keyfile)
    hub = verify(messages, keyfile, args.lorawan, args.out, args.broker, args.no_broker, console)
    comparison = compare(truth, hub)
    (args.out / "report.json").write_text(json.dumps(
        {"scenario": vars(scenario), "comparison": comparison, "hub": hub}, indent=2, sort_keys=True) + "\n")
    print_comparison(comparison, console)
    console.print(f"{len(messages)} {args.lorawan} uplink events; wrote {args.out / 'report.json'}.", highlight=False)
    return 0 if comparison["radio_matches_truth"] else 1


def _record(args):
    from .run import generate
    from .trace import TraceError, fates_from_pattern, write_trace

    scenario = _scenario(args)
    fates = None
    if args.loss_pattern:
        try:
            fates = fates_from_pattern(args.loss_pattern.read_text())
        except OSError as exc:
            raise InputError(f"{args.loss_pattern}: {exc.strerror}") from None
        except TraceError as exc:
            raise InputError(f"{args.loss_pattern}: {exc}") from None
        if len(scenario.links) != 1:
            raise InputError(f"--loss-pattern drives one device on one link: give exactly one with --links "
                             f"(e.g. --links lora), not {', '.join(scenario.links)}")
        # One device sending the pattern's frames at --rate: the run lasts as long as they take.
        scenario.devices, scenario.attacks, scenario.duration = 1, {}, len(fates) / scenario.rate
        # The pattern is the truth the replay compares with, not the link type's profile: its loss
        # fraction, and nothing damaged or duplicated.
        lost = sum(fate.lost for fate in fates) / len(fates)
        scenario.profiles[scenario.links[0]] = {"loss": "bernoulli", "loss_rate": lost, "burst_rate": 0.0,
                                                "duplicate": 0.0}
    generated = generate(scenario, fates=fates)
    header = {**generated.header(), "source": "loss pattern" if fates else "fault models"}
    write_trace(args.out, header, generated.events)
    sent = sum(1 for e in generated.events if hasattr(e, "fate"))
    print(f"wrote {args.out}: {sent} frames, {len(generated.events) - sent} attacks")


def _replay(args):
    from hardware.link_registry import load_links
    from hub.cli_common import open_keyfile

    from .faults import model_for
    from .run import Generated, Scenario, device_specs, label, make_devices
    from .trace import TraceError, read_trace, without_status

    console = Console(width=80)
    try:
        header, events = read_trace(args.trace)
    except TraceError as exc:
        raise InputError(str(exc)) from None
    events, statuses = without_status(events)
    if statuses:
        console.print(f"Left out {statuses} status messages: the comparison covers records.", highlight=False)
    registry = load_links()
    try:
        if args.keys:  # real devices (a proxy trace): their keys and links come from the key file
            generated = _real_devices(open_keyfile(args), events, header.get("seed", 0))
        else:
            if header.get("source") == "proxy":
                raise InputError(f"{args.trace}: a proxy trace of real devices: give their key file with --keys")
            keys, device_links = make_devices(header["seed"], header["devices"], tuple(header["links"]))
            scenario = Scenario(devices=header["devices"], links=tuple(header["links"]), duration=header["duration"],
                                rate=header["rate"], seed=header["seed"], attacks=header["attacks"],
                                profiles=header["profiles"])
            specs = device_specs(keys, device_links)
            models = {d: model_for(registry[link], scenario.profiles.get(link)) for d, link in device_links.items()}
            generated = Generated(scenario, specs, device_links, keys, events, models)
    except (KeyError, TypeError) as exc:
        raise InputError(f"{args.trace}:1: header lacks {exc}") from None
    labelled, ledger = label(events, generated.device_links)
    hub, outcomes = _verify(generated, labelled, args.no_broker, args.broker, args.out, console)
    return _finish(generated, header, events, labelled, ledger, hub, outcomes, args.out, console)


def _real_devices(keyfile, events: list, seed: int, profiles: dict | None = None):
    """The run of real devices (proxy traces): their keys and links come from the key file;
    profiles: the link-model overrides the proxies ran with."""
    from hardware.link_registry import load_links

    from .faults import model_for
    from .run import Generated, Scenario

    registry = load_links()
    specs = keyfile.device_keys()
    keys = {spec.device_id: spec.keys for spec in specs}
    device_links = {spec.device_id: spec.link for spec in specs}
    links = sorted({e.link for e in events if hasattr(e, "fate")})
    profiles = profiles or {}
    scenario = Scenario(devices=len(specs), links=tuple(links) or ("wifi",), seed=seed, profiles=profiles)
    models = {f"profile:{link}": model_for(registry[link], profiles.get(link)) for link in links}
    return Generated(scenario, specs, device_links, keys, events, models)


def _run_virtual(args, scenario, console):
    from .run import label
    from .virtual_device import MicroPythonError, node_with_micropython
    from .virtual_run import run_virtual_devices

    if args.attacks:
        raise InputError("--attacks: the simulator plays attackers only with its own agents, not --virtual-devices")
    scenario.devices, scenario.attacks = args.virtual_devices, {}
    try:  # the npm MicroPython runtime lives in a checkout (`make test`), not in the wheel
        node_with_micropython()
    except MicroPythonError as exc:
        raise InputError(f"--virtual-devices: {exc}") from None
    broker = None
    if args.broker:
        from hub.service.config import parse_broker

        broker = parse_broker(args.broker)
    keyfile, events = run_virtual_devices(scenario, args.out, broker, console)
    generated = _real_devices(keyfile, events, scenario.seed, scenario.profiles)
    labelled, ledger = label(events, generated.device_links)
    hub, outcomes = _verify(generated, labelled, args.no_broker, args.broker, args.out, console)
    header = {**generated.header(), "duration": scenario.duration, "rate": scenario.rate, "source": "virtual devices"}
    return _finish(generated, header, events, labelled, ledger, hub, outcomes, args.out, console)


def _proxy(args):
    import asyncio

    from hardware.link_registry import load_links

    from .faults import model_for
    from .proxy import FaultProxy

    registry = load_links()
    if args.profile not in registry:
        raise InputError(f"--profile {args.profile!r}: not a link type ({', '.join(sorted(registry))})")
    overrides = _profile_overrides(f"{args.profile}.{item}" for item in args.set).get(args.profile, {})
    outages = []
    for item in args.outage:
        try:
            start, length = (float(x) for x in item.split(":"))
        except ValueError:
            start = length = float("nan")
        if not (0 <= start < 1e9 and 0 < length < 1e9):  # nan fails too
            raise InputError(f"--outage {item!r}: expected START:DURATION in seconds, START >= 0, DURATION > 0")
        outages.append((start, length))
    model = model_for(registry[args.profile], overrides)
    listen, upstream = [(host or "127.0.0.1", port) for host, port in (args.listen, args.upstream)]
    proxy = FaultProxy(model, upstream, args.seed, args.trace, outages)

    def ready(bound):
        print(f"listening on {bound[0]}:{bound[1]}, forwarding to {upstream[0]}:{upstream[1]} "
              f"through the {args.profile} profile; trace: {args.trace}", flush=True)

    asyncio.run(proxy.serve(*listen, ready=ready))
    print(f"stopped after {proxy.published} PUBLISH packets", flush=True)


def _capture(args):
    from shared.capture import encode_line

    from .run import generate, label

    scenario = _scenario(args)
    keyfile = new_keyfile(args.keys_out, args.insecure_plaintext)
    generated = generate(scenario, keyfile=keyfile)
    labelled, _ = label(generated.events, generated.device_links)
    with open(args.out, "w") as out:
        for t, topic, data, _, _ in labelled:
            out.write(encode_line(round(t, 6), topic, data) + "\n")
    print(f"wrote {len(labelled)} messages to {args.out} and the keys of {len(generated.devices)} devices "
          f"to {args.keys_out}")


def _demo(args) -> int:
    if args.console and args.no_broker:
        raise InputError("--console shows the hub's database, which only the broker path writes: drop --no-broker")
    status = run_demo(args.no_broker, args.out, args.seed)
    if args.console:
        from hub.service.console.server import ConsoleServer, is_loopback

        host, port = args.console
        if not is_loopback(host):
            raise InputError(f"--console {host}: the demo's console stays on loopback (`hub console` serves others "
                             "with TLS and a token)")
        try:
            server = ConsoleServer(args.out / "hub.db", host, port).start()
        except OSError as exc:
            raise InputError(f"--console {host}:{port}: cannot listen ({exc})") from None
        print(f"console on http://{server.address}/ (read-only); Ctrl-C to stop", flush=True)
        from hub.cli import serve_until_stopped

        serve_until_stopped(server)
    return status


def run_demo(no_broker: bool, out: Path, seed: int) -> int:
    """`linkseal demo`: a dozen devices on six link types, faults and attacks, through the embedded
    broker to the hub; then the tables and where the report and plots went."""
    from .run import Scenario, generate, label

    console = Console(width=80)
    scenario = Scenario(devices=12, duration=300, rate=5, seed=seed)
    console.print(f"linkseal demo: {scenario.devices} devices on {', '.join(scenario.links)}; "
                  f"{int(scenario.duration)} simulated seconds at {scenario.rate:g} frames/s each, with link faults "
                  "and attacks, through " + ("the hub core directly." if no_broker else
                                             "an embedded MQTT broker (amqtt) to the hub service."), highlight=False)
    with console.status("generating traffic through the fault models..."):
        generated = generate(scenario)
        labelled, ledger = label(generated.events, generated.device_links)
    hub, outcomes = _verify(generated, labelled, no_broker, None, out, console)
    return _finish(generated, generated.header(), generated.events, labelled, ledger, hub, outcomes, out, console)
