"""`linkseal keys ...`: the hub key file, devices, and the certificate authority."""

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hub.cli_common import InputError, Number, add_keys_option, command, duration, new_keyfile, open_keyfile


def add_keys_group(groups):
    keys = groups.add_parser("keys", help="the hub key file, devices, keys and certificates")
    sub = keys.add_subparsers(dest="command", required=True)

    init = command(sub, "init", "Create a hub key file (mode 0600, encrypted) with a random master secret. "
                   "The passphrase comes from LINKSEAL_PASSPHRASE_FILE, LINKSEAL_PASSPHRASE or a prompt.",
                   ["linkseal keys init --out hub.keys",
                    "LINKSEAL_PASSPHRASE_FILE=/run/credentials/pass linkseal keys init --out hub.keys"])
    init.add_argument("--out", required=True, type=Path, help="path of the new key file")
    init.add_argument("--insecure-plaintext", action="store_true", help="do not encrypt (tests and demos only)")
    init.set_defaults(run=_init)

    prov = command(sub, "provision", "Register a device and write its config (mode 0600): key and broker login.",
                   ["linkseal keys provision pump-12 --keys hub.keys --link wifi --out pump-12.json"])
    prov.add_argument("device_id")
    add_keys_option(prov)
    prov.add_argument("--link", required=True, help="home link type (see hardware/links)")
    prov.add_argument("--tag-len", type=int, choices=(8, 16, 32),
                      help="tag length; also the minimum the hub accepts from this device (default 16; 8 in the "
                           "compact form)")
    prov.add_argument("--form", choices=("full", "compact"),
                      help="frame form (default: compact on links whose own check drops damaged frames "
                           "(LoRaWAN), which alone allow it; full elsewhere)")
    prov.add_argument("--region", help="LoRaWAN region for the payload limit (default EU868)")
    prov.add_argument("--data-rate", help="LoRaWAN data rate, e.g. DR0 (default: the region's smallest payload)")
    prov.add_argument("--dev-eui", help="LoRaWAN DevEUI (16 hex digits): how the network server names the device "
                                        "(`hub run --lorawan`)")
    prov.add_argument("--encrypt", action="store_true",
                      help="the device encrypts its records end to end (AES-128-CTR under a key derived from its "
                           "own; docs/protocol.md); the hub refuses its records in clear")
    prov.add_argument("--key-id", type=Number(int, 0, 255), default=0, help="key id, 0..255 (default 0)")
    prov.add_argument("--out", required=True, type=Path, help="where to write the device config")
    prov.add_argument("--force", action="store_true",
                      help="re-provision a device the key file already has, or replace an existing --out file")
    prov.set_defaults(run=_provision)

    rotate = command(sub, "rotate", "Give a device a new key id and write its new config; the hub accepts the "
                     "previous key for a grace period, then refuses it as a retired key.",
                     ["linkseal keys rotate pump-12 --keys hub.keys --out pump-12.json --grace 7d --force"])
    rotate.add_argument("device_id")
    add_keys_option(rotate)
    rotate.add_argument("--out", required=True, type=Path, help="where to write the new device config")
    rotate.add_argument("--grace", type=duration, default="7d",
                        help="how long the previous key stays valid (default 7d)")
    rotate.add_argument("--force", action="store_true", help="replace an existing --out file")
    rotate.set_defaults(run=_rotate)

    revoke = command(sub, "revoke", "Refuse every later frame from a device (restart the hub or send it SIGHUP; "
                     "regenerate the broker config to lock it out of the broker too).",
                     ["linkseal keys revoke pump-12 --keys hub.keys"])
    revoke.add_argument("device_id")
    add_keys_option(revoke)
    revoke.set_defaults(run=_revoke)

    listing = command(sub, "list", "Devices, links, key ids and states; never key material.",
                      ["linkseal keys list --keys hub.keys", "linkseal keys list --keys hub.keys --json"])
    add_keys_option(listing)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=_list)

    encrypt = command(sub, "encrypt", "Encrypt a plaintext key file in place (atomically), or re-encrypt an "
                      "encrypted one under a new passphrase (LINKSEAL_NEW_PASSPHRASE or a prompt).",
                      ["LINKSEAL_PASSPHRASE_FILE=pass linkseal keys encrypt --keys hub.keys"])
    encrypt.add_argument("--keys", required=True, type=Path, help="hub key file")
    encrypt.set_defaults(run=_encrypt)

    ca = sub.add_parser("ca", help="the certificate authority for mutual TLS")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True)
    ca_init = command(ca_sub, "init", "Create a CA (key 0600) for broker, hub and device certificates.",
                      ["linkseal keys ca init --dir ca/"])
    ca_init.add_argument("--dir", required=True, type=Path)
    ca_init.set_defaults(run=_ca_init)

    cert = command(sub, "cert", "Issue a client certificate for a device or the hub (CN = its MQTT identity).",
                   ["linkseal keys cert pump-12 --ca ca/ --out certs/", "linkseal keys cert hub --ca ca/ --out certs/"])
    cert.add_argument("name", help="a device id, or `hub`")
    cert.add_argument("--ca", required=True, type=Path, help="CA directory from `keys ca init`")
    cert.add_argument("--out", required=True, type=Path, help="directory for NAME.pem and NAME-key.pem")
    cert.add_argument("--force", action="store_true", help="replace an existing certificate and key")
    cert.set_defaults(run=_cert)


def _refuse_existing(path, force: bool, option="--out") -> None:
    """Output files are never replaced silently (a device config or a private key lost)."""
    if path.exists() and not force:
        what = "is a directory" if path.is_dir() else "exists"
        raise InputError(f"{option} {path}: {what}; add --force to replace it")


def _write_device_config(path, config):
    from hub.keys.keyfile import write_private_json

    write_private_json(path, config)


def _init(args):
    keyfile = new_keyfile(args.out, args.insecure_plaintext)
    how = f"encrypted with {keyfile.encrypted_with} + AES-256-GCM" if keyfile.encrypted_with else \
        "NOT encrypted (--insecure-plaintext)"
    print(f"created {args.out} (mode 0600, {how}): keep it on the bastion host only")


def _provision(args):
    if args.out.is_dir():
        raise InputError(f"--out {args.out}: is a directory; name the device config file")
    _refuse_existing(args.out, args.force)
    keyfile = open_keyfile(args)
    entry = keyfile.devices.get(args.device_id)
    if entry is not None and not args.force:
        wanted = {"link": args.link, "tag_len": args.tag_len, "key_id": args.key_id}
        changes = [f"{name} {entry[name]} -> {value}" for name, value in wanted.items()
                   if value is not None and entry[name] != value]
        raise InputError(f"{args.device_id}: already provisioned ({entry['state']}, {entry['link']}); "
                         + (f"this would change {', '.join(changes)}" if changes else "nothing would change")
                         + "; add --force to re-provision it (`keys rotate` gives it a new key)")
    config = keyfile.provision(args.device_id, args.link, args.tag_len, args.key_id, form=args.form,
                               region=args.region, data_rate=args.data_rate, dev_eui=args.dev_eui,
                               encrypt=args.encrypt)
    _write_device_config(args.out, config)
    print(f"provisioned {args.device_id} on {args.link} ({config['form']} frames, tag {config['tag_len']} bytes, "
          f"key id {args.key_id}{', records encrypted' if args.encrypt else ''}); device config written to "
          f"{args.out} (mode 0600)")


def _rotate(args):
    grace = args.grace
    _refuse_existing(args.out, args.force)
    keyfile = open_keyfile(args)
    config = keyfile.rotate(args.device_id, grace)
    _write_device_config(args.out, config)
    until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(time.time() + grace))
    print(f"{args.device_id}: now key id {config['key_id']}; the previous key is accepted until {until}. "
          f"New device config in {args.out} (mode 0600).")


def _revoke(args):
    keyfile = open_keyfile(args)
    keyfile.revoke(args.device_id)
    print(f"{args.device_id}: revoked. Every later frame is refused as forged once the hub reloads the key file "
          "(SIGHUP or restart); regenerate the broker config to lock it out of the broker.")


def _list(args):
    keyfile = open_keyfile(args)
    rows = []
    for device_id, entry in sorted(keyfile.devices.items()):
        rows.append({"device": device_id, "link": entry["link"], "tag_len": entry["tag_len"],
                     "key_id": entry["key_id"], "state": entry["state"],
                     "previous_key_ids": [p["key_id"] for p in entry["previous"]]})
    if args.json:
        print(json.dumps({"encrypted_with": keyfile.encrypted_with, "devices": rows}, indent=2))
        return
    table = Table(title=f"{args.keys} ({keyfile.encrypted_with or 'plaintext'})")
    for header in ("device", "link", "tag", "key id", "state", "previous"):
        table.add_column(header)
    for row in rows:
        table.add_row(row["device"], row["link"], str(row["tag_len"]), str(row["key_id"]), row["state"],
                      ", ".join(map(str, row["previous_key_ids"])))
    Console(width=80).print(table)


def _encrypt(args):
    import os

    from hub.keys.keyfile import KeyFile
    from hub.keys.keystore import KeystoreError, passphrase_from_environment

    keyfile = KeyFile.load(args.keys, passphrase=passphrase_from_environment, allow_plaintext=True)
    if keyfile.encrypted_with:
        new = os.environ.get("LINKSEAL_NEW_PASSPHRASE", "").encode()
        if not new:
            import getpass
            import sys

            if not sys.stdin.isatty():
                raise KeystoreError("re-encrypting needs the new passphrase in LINKSEAL_NEW_PASSPHRASE or a terminal")
            new = getpass.getpass("new passphrase: ").encode()
            if getpass.getpass("again: ").encode() != new or not new:
                raise KeystoreError("the two passphrases differ or are empty")
    else:
        new = passphrase_from_environment(confirm=True)
    keyfile.encrypt(new)
    print(f"{args.keys}: encrypted with {keyfile.encrypted_with} + AES-256-GCM (replaced atomically)")


def _ca_init(args):
    from hub.keys.pki import init_ca

    print(f"created {init_ca(args.dir)} (its key is {args.dir / 'ca-key.pem'}, mode 0600)")


def _cert(args):
    from hub.keys.keyfile import HUB_MQTT_USER, valid_device_id
    from hub.keys.pki import issue

    common_name = HUB_MQTT_USER if args.name == "hub" else valid_device_id(args.name)
    for path in (args.out / f"{args.name}.pem", args.out / f"{args.name}-key.pem"):
        _refuse_existing(path, args.force, "--out")
    cert, key = issue(args.ca, common_name, args.out, args.name)
    print(f"issued {cert} (CN={common_name}) and {key} (mode 0600)")
