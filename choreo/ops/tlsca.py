"""A private certificate authority for the private RabbitMQ cluster (`choreo cluster up --tls`).

One CA per cluster folder, made once and reused: its certificate signs a node certificate (SANs
DNS:localhost and IP:127.0.0.1, the nodes' host; serverAuth and clientAuth, because Erlang
distribution over TLS presents it both ways: a node dialling a peer, rabbitmqctl dialling a node)
and a client certificate (clientAuth) for choreo's own processes. Files, in `tls/` (0700):

    ca.pem ca.key (0400)   node.pem node.key   client.pem client.key   (all owner-only)

Built on the `cryptography` library rather than `openssl` subprocesses: no dependency on which
openssl binary (or config file, or default extensions) the machine has; the private keys never
pass through argv, a pipe or a temporary file another process could read; each file is created
owner-only from its first byte (O_EXCL, mode given to open(2), then an atomic rename), which an
`openssl ... -out` followed by chmod cannot promise; and a failure is a Python exception with a
reason, not an exit code to parse. EC P-256 keys, SHA-256 signatures; the CA lasts 2 years, the
leaf certificates 1 year, and `ensure` re-issues whatever is missing, damaged, no longer signed
by the CA or within RENEW_BEFORE of its end.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import stat
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 730
LEAF_DAYS = 365
RENEW_BEFORE = dt.timedelta(days=14)  # re-issued by `ensure` once it has less than this left
HOSTNAMES = ("localhost",)  # the nodes' host (node names are <tag>-n<i>@localhost)
ADDRESSES = ("127.0.0.1",)  # every listener is on loopback
PRIVATE = 0o600
CA_KEY_MODE = 0o400  # written once, never rewritten in place


class TlsError(RuntimeError):
    pass


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files of one CA folder."""

    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca.key"

    @property
    def node_cert(self) -> Path:
        return self.folder / "node.pem"

    @property
    def node_key(self) -> Path:
        return self.folder / "node.key"

    @property
    def client_cert(self) -> Path:
        return self.folder / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.folder / "client.key"

    def as_dict(self) -> dict[str, str]:
        return {
            "ca_file": str(self.ca),
            "node_cert_file": str(self.node_cert),
            "node_key_file": str(self.node_key),
            "cert_file": str(self.client_cert),
            "key_file": str(self.client_key),
        }


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _private_folder(folder: Path) -> None:
    """`folder`, 0700 and ours (made so; an existing one is tightened), never through a symlink."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise TlsError(f"{folder} is not a folder of this user's")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(folder, 0o700)


def write_private(path: Path, data: bytes, mode: int = PRIVATE) -> None:
    """`data` into `path`, atomically, owner-only from the start: a fresh file (O_EXCL,
    no symlink followed) with `mode` given to open(2) (the umask can only take bits
    away), renamed into place."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # PKCS#8 ("BEGIN PRIVATE KEY"): read by Erlang's ssl (public_key), Python's ssl, pika and
    # py-amqp.
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pub(key) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "choreo"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def new_ca(
    common_name: str, days: int = CA_DAYS
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A fresh CA: its key and self-signed certificate (may sign end-entity certificates only)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    common_name: str,
    *,
    server: bool,
    hostnames: tuple[str, ...] = HOSTNAMES,
    addresses: tuple[str, ...] = ADDRESSES,
    days: int = LEAF_DAYS,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A key and a certificate signed by the CA: `server` for serverAuth and clientAuth with the
    given SANs (a node), otherwise clientAuth only (a client)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    usages = (
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        if server
        else [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(h) for h in hostnames]
                + [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
            ),
            critical=False,
        )
    return key, builder.sign(ca_key, hashes.SHA256())


def _load(cert_path: Path, key_path: Path):
    """(key, cert) if both files parse and belong together, else None."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    return (key, cert) if _pub(key.public_key()) == _pub(cert.public_key()) else None


def _fresh(cert: x509.Certificate) -> bool:
    return cert.not_valid_before_utc <= _now() and cert.not_valid_after_utc - _now() > RENEW_BEFORE


def _signed_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):  # another issuer's name, key or signature
        return False
    return True


def _names(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    """A certificate's DNS and IP subject alternative names."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), set()
    return set(san.get_values_for_type(x509.DNSName)), {
        str(a) for a in san.get_values_for_type(x509.IPAddress)
    }


def ensure(
    folder: Path | str,
    label: str = "choreo",
    hostnames: tuple[str, ...] = HOSTNAMES,
    addresses: tuple[str, ...] = ADDRESSES,
) -> TlsFiles:
    """The CA folder `folder` (0700), made or completed: a CA named "<label> CA" unless a usable
    one is there, and the node and client certificates unless usable ones signed by it are there
    (the node's naming exactly `hostnames` and `addresses`). Idempotent: a second call changes
    nothing (so a cluster's `up` reuses its certificates)."""
    files = TlsFiles(Path(folder))
    _private_folder(files.folder)
    ca = _load(files.ca, files.ca_key)
    if ca is None or not _fresh(ca[1]):
        ca = new_ca(f"{label} CA")
        write_private(files.ca_key, _key_pem(ca[0]), CA_KEY_MODE)
        write_private(files.ca, ca[1].public_bytes(serialization.Encoding.PEM))
    ca_key, ca_cert = ca
    for cert_path, key_path, cn, server in (
        (files.node_cert, files.node_key, "localhost", True),
        (files.client_cert, files.client_key, f"{label} client", False),
    ):
        have = _load(cert_path, key_path)
        if (
            have
            and _fresh(have[1])
            and _signed_by(have[1], ca_cert)
            and (not server or _names(have[1]) == (set(hostnames), set(addresses)))
        ):
            continue
        key, cert = issue(
            ca_key, ca_cert, cn, server=server, hostnames=hostnames, addresses=addresses
        )
        write_private(
            key_path, _key_pem(key)
        )  # the key first: a crash in between leaves a pair that
        write_private(
            cert_path, cert.public_bytes(serialization.Encoding.PEM)
        )  # does not match: re-issued
    for path in (
        files.ca,
        files.ca_key,
        files.node_cert,
        files.client_cert,
        files.node_key,
        files.client_key,
    ):
        if (
            stat.S_IMODE(os.stat(path).st_mode) & 0o077
        ):  # an older file, or one copied in: owner-only
            os.chmod(path, CA_KEY_MODE if path == files.ca_key else PRIVATE)
    return files


def unrelated_ca(folder: Path | str, label: str = "unrelated") -> TlsFiles:
    """A second CA with its own node and client certificates, sharing nothing with any other
    (a "wrong CA", to show a peer refusing what it did not sign). `folder` must be its own."""
    return ensure(folder, label)


def server_copy(files: TlsFiles, folder: Path | str, owner: int) -> TlsFiles:
    """The CA certificate and the node's certificate and key, copied into `folder` (0700)
    and owned by `owner` (a uid): what a server that runs as another user reads
    (RabbitMQ, Redis and PostgreSQL in their images run as uid 999). The CA's key and the
    client's stay where they are."""
    out = TlsFiles(Path(folder))
    out.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for src, dst in (
        (files.ca, out.ca),
        (files.node_cert, out.node_cert),
        (files.node_key, out.node_key),
    ):
        write_private(dst, src.read_bytes())
        os.chown(dst, owner, owner)
    os.chmod(out.folder, 0o700)
    os.chown(out.folder, owner, owner)
    return out
