"""Command-line pieces every `linkseal` command group uses: errors and exit statuses, help
with examples, checked numeric options, the broker options."""

import argparse

EXIT_INPUT = 2  # usage and input errors
EXIT_INTERNAL = 1  # a bug


class InputError(Exception):
    """Bad input from the user: reported as one line, exit status 2."""


def command(sub, name, help_text, examples):
    """A subcommand whose --help ends with examples."""
    return sub.add_parser(name, help=help_text, description=help_text,
                          epilog="example:\n  " + "\n  ".join(examples),
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def add_broker_options(parser, username_note="", required=True):
    """--broker and its TLS files and login, as `hub run`, `agent run` and `relay` take them."""
    parser.add_argument("--broker", required=required, help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    parser.add_argument("--ca-file", help="CA certificate that signed the broker's certificate (mqtts)")
    parser.add_argument("--cert-file", help="client certificate for mutual TLS")
    parser.add_argument("--key-file", help="client certificate's private key for mutual TLS")
    parser.add_argument("--username", help=f"MQTT user name{username_note}; the password comes from "
                                           "LINKSEAL_MQTT_PASSWORD or --password-file, never the command line")
    parser.add_argument("--password-file", help="file holding the MQTT password")


def broker_from_args(args):
    """The Broker the options of add_broker_options describe (ConfigError names the option)."""
    from shared.settings import parse_broker

    return parse_broker(args.broker, args.ca_file, args.cert_file, args.key_file, args.username, args.password_file)


# -- numeric options: checked while parsing, so a bad value is a usage error (exit 2) naming
# the option, never a traceback from deep inside a command. tests/test_cli_options.py walks
# every option of every command with extreme values and holds all of them to these types.

class Number:
    """An argparse type for an int or a finite float within [low, high]."""

    def __init__(self, kind, low, high, unit=""):
        self.kind, self.low, self.high, self.unit = kind, low, high, unit
        self.__name__ = kind.__name__  # argparse names the type in its messages

    def __call__(self, text: str):
        try:
            value = self.kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {'a whole' if self.kind is int else 'a'} number")
        if not (self.low <= value <= self.high):  # also refuses nan (every comparison is false)
            raise argparse.ArgumentTypeError(f"{text!r} is outside {self.low:g}..{self.high:g}{self.unit}")
        return value

    def __repr__(self):
        return f"{self.kind.__name__} in {self.low:g}..{self.high:g}"


SEED = Number(int, 0, 2**32 - 1)
PORT = Number(int, 1, 65535)


def duration(text: str) -> float:
    """An argparse type for 90s, 15m, 2h, 7d (at most 9 digits)."""
    from shared.settings import ConfigError, parse_duration

    try:
        return parse_duration(text, "")
    except ConfigError as exc:  # its message, without the place (argparse names the option)
        raise argparse.ArgumentTypeError(str(exc).strip()) from None


def host_port(text: str) -> tuple[str, int]:
    """An argparse type for HOST:PORT (port 0: any free port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdecimal() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT with a port in 0..65535")
    return host, int(port)
