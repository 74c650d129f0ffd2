"""Pieces every `linkseal` command group uses: errors, help with examples, the key file."""

import argparse
from pathlib import Path

EXIT_INPUT = 2


class InputError(Exception):
    """Bad input from the user: reported as one line, exit status 2."""


def command(sub, name, help_text, examples):
    """A subcommand whose --help ends with examples."""
    return sub.add_parser(name, help=help_text, description=help_text,
                          epilog="example:\n  " + "\n  ".join(examples),
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def add_keys_option(parser, flag="--keys", help_text="hub key file"):
    parser.add_argument(flag, required=True, type=Path, help=help_text)
    parser.add_argument("--insecure-plaintext", action="store_true",
                        help="allow an unencrypted key file (tests and demos only)")


def open_keyfile(args):
    """The hub key file named by --keys, decrypted with the passphrase from the environment."""
    from hub.keys.keyfile import KeyFile
    from hub.keys.keystore import passphrase_from_environment

    return KeyFile.load(args.keys, passphrase=passphrase_from_environment, allow_plaintext=args.insecure_plaintext)


def new_keyfile(path, insecure_plaintext: bool):
    """A new key file: encrypted under the passphrase from the environment or a prompt."""
    from hub.keys.keyfile import KeyFile
    from hub.keys.keystore import passphrase_from_environment

    if insecure_plaintext:
        return KeyFile.create(path)
    return KeyFile.create(path, passphrase_from_environment(confirm=True))
