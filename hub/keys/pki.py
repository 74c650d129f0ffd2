"""A small certificate authority for mutual TLS between devices, the hub and the broker.

Made with cryptography's x509: EC P-256 keys, a CA valid 10 years, leaf certificates valid
2 years. Private keys are written 0600. A client certificate's common name is the MQTT
identity the broker sees (`use_identity_as_username`): the device id, or linkseal/hub.
"""

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hub.keys.keyfile import write_file

CA_CERT, CA_KEY = "ca.pem", "ca-key.pem"


class PKIError(ValueError):
    """A CA directory or certificate request that cannot be used; names the path."""


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "linkseal"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def init_ca(directory: Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / CA_KEY).exists():
        raise PKIError(f"{directory / CA_KEY}: already exists; refusing to replace a CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name("linkseal CA")).issuer_name(_name("linkseal CA"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    write_file(directory / CA_KEY, _key_pem(key), private=True)
    write_file(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return directory / CA_CERT


def _load_ca(directory: Path):
    directory = Path(directory)
    try:
        key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
    except FileNotFoundError as exc:
        raise PKIError(f"{exc.filename}: missing; create the CA with `linkseal keys ca init --dir {directory}`") from None
    except ValueError:
        raise PKIError(f"{directory}: not a linkseal CA (unreadable PEM)") from None
    return key, cert


def issue(ca_dir: Path, common_name: str, out_dir: Path, file_stem: str, server_hosts=()) -> tuple[Path, Path]:
    """A certificate and key signed by the CA: a server's for server_hosts, else a client's."""
    ca_key, ca_cert = _load_ca(ca_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=730))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    if server_hosts:
        names = []
        for host in server_hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = (builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out_dir / f"{file_stem}.pem", out_dir / f"{file_stem}-key.pem"
    write_file(key_path, _key_pem(key), private=True)
    write_file(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return cert_path, key_path
