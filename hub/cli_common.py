"""The hub's command-line pieces: the key file options (the rest is shared/cli.py, below every part)."""

from pathlib import Path

from shared.cli import (  # noqa: F401  (the hub's command groups take them from here)
    EXIT_INPUT,
    EXIT_INTERNAL,
    PORT,
    SEED,
    InputError,
    Number,
    add_broker_options,
    broker_from_args,
    command,
    duration,
    host_port,
)


def add_keys_option(parser, flag="--keys", help_text="hub key file", required=True):
    parser.add_argument(flag, required=required, type=Path, help=help_text)
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
