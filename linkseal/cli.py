"""The `linkseal` command: a thin dispatcher over the groups each part defines.

keys, hub (hub/), sim and demo (simulator/), firmware (firmware/), agent (agent/linux/), relay (relay/).
Every input or usage error ends with one line `linkseal: error: ...` naming what and where,
exit status 2, no traceback. Keys are never printed.
"""

import argparse
import sys

from agent.linux.cli import add_agent_group
from firmware.host.cli import add_firmware_group
from hub.cli import add_hub_group
from hub.cli_common import EXIT_INPUT, EXIT_INTERNAL
from hub.cli_keys import add_keys_group
from relay.cli import add_relay_group
from simulator.cli import add_demo_command, add_sim_group

from . import __version__


def input_errors() -> tuple:
    """What a command raises for bad input (or a file it cannot use); imported only when
    something was raised, so that start-up does not load modules a command may never use.
    Anything else is a bug: exit status 1, its traceback only with --debug."""
    from firmware.host.build import BuildError
    from firmware.host.flash import FlashError
    from hardware.board_registry import BoardError
    from hardware.link_registry import RegistryError
    from hub.cli_common import InputError
    from hub.keys.keyfile import KeyFileError
    from hub.keys.keystore import KeystoreError
    from hub.keys.pki import PKIError
    from shared.capture import CaptureError
    from hub.service.config import ConfigError
    from hub.service.storage.sqlite import StorageError
    from simulator.run import ScenarioError
    from simulator.trace import TraceError

    return (InputError, BoardError, BuildError, CaptureError, ConfigError, FlashError, KeyFileError, KeystoreError,
            PKIError, RegistryError, ScenarioError, StorageError, TraceError, OSError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="linkseal",
        description="Edge integrity for constrained networks: seal records on devices, verify them per link.",
        epilog="example:\n  linkseal demo\n  linkseal keys init --out hub.keys\n"
               "  linkseal hub verify capture.jsonl --keys hub.keys",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"linkseal {__version__}")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an internal error")
    groups = parser.add_subparsers(dest="group", metavar="{keys,hub,sim,firmware,agent,relay,demo}")
    groups.required = True
    add_keys_group(groups)
    add_hub_group(groups)
    add_sim_group(groups)
    add_agent_group(groups)
    add_firmware_group(groups)
    add_relay_group(groups)
    add_demo_command(groups)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if not isinstance(exc, input_errors()):
            if args.debug:
                raise
            print(f"linkseal: internal error: {type(exc).__name__}: {exc} (a bug in linkseal, not in your input; "
                  "run again with --debug for the traceback, and please report it)", file=sys.stderr)
            return EXIT_INTERNAL
        message = f"{exc.filename}: {exc.strerror}" if isinstance(exc, OSError) and exc.filename else str(exc)
        print(f"linkseal: error: {message}", file=sys.stderr)
        return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())
