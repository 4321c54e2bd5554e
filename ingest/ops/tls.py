"""A local certificate authority and a server certificate for localhost, for the local broker.

``ensure_local_tls(DIR)`` leaves in ``DIR`` a CA (``ca.crt``, ``ca.key``) and a server
certificate for ``localhost``, ``127.0.0.1`` and ``::1`` signed by it (``server.crt``,
``server.key``); keys are written with mode 0600. What is there is reused while it is still
valid, so clients that were given ``ca.crt`` keep trusting the broker across ``stack up``s:
the server certificate is reissued (by the same CA) when it nears its end or lacks a name,
the CA only when it is itself near its end or unreadable.

For local use only: production brings certificates from its own CA.
Written with ``cryptography`` rather than the openssl CLI: SANs, key usages and the validity
check are typed calls instead of config files and output parsing, and behave the same on
every OpenSSL version.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
SERVER_DAYS = 397  # what public CAs may issue; no client here needs more
# Renew this long before the end, so a certificate never expires under a running broker.
RENEW_BEFORE = dt.timedelta(days=30)
DEFAULT_DNS_NAMES = ("localhost",)
DEFAULT_IPS = ("127.0.0.1", "::1")


class TlsError(RuntimeError):
    """A certificate or key could not be read or written."""


@dataclass(frozen=True)
class TlsFiles:
    """Where the broker's TLS files are."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    ca_key: Path | None = None  # only for a local CA made here


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` whole and rename it into place, created with ``mode`` from the start."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    # O_EXCL with the mode at creation: a private key is never readable by others, not even
    # for the moment between writing it and a chmod.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),  # Mosquitto reads it unattended, at start
    )


def _load(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path} is not an EC key")
    if cert.public_key() != key.public_key():
        raise ValueError(f"{key_path} does not belong to {cert_path}")
    return cert, key


def _usable(cert: x509.Certificate, now: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= now and now + RENEW_BEFORE < cert.not_valid_after_utc


def _names(dns_names: Sequence[str], ips: Sequence[str]) -> list[x509.GeneralName]:
    return [
        *(x509.DNSName(n) for n in dns_names),
        *(x509.IPAddress(ipaddress.ip_address(i)) for i in ips),
    ]


def _covers(cert: x509.Certificate, wanted: list[x509.GeneralName]) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return set(wanted) <= set(san)


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _make_ca(now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "citysense (local only)"),
            x509.NameAttribute(NameOID.COMMON_NAME, "citysense local CA"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate a little clock skew
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_server(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    names: list[x509.GeneralName],
    now: dt.datetime,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    first = next((n.value for n in names if isinstance(n, x509.DNSName)), "localhost")
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(first))]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=SERVER_DAYS), ca.not_valid_after_utc))
        # Clients check the name against the SAN, never the CN.
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def ensure_local_tls(
    directory: Path,
    *,
    dns_names: Sequence[str] = DEFAULT_DNS_NAMES,
    ips: Sequence[str] = DEFAULT_IPS,
    now: dt.datetime | None = None,
) -> TlsFiles:
    """A local CA and a server certificate for ``dns_names``/``ips`` in ``directory``.

    Reuses what is there while valid for at least ``RENEW_BEFORE``; see the module docstring.
    """
    now = now or _now()
    directory.mkdir(parents=True, exist_ok=True)
    ca_key_path = directory / "ca.key"
    files = TlsFiles(
        ca_cert=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        ca_key=ca_key_path,
    )
    names = _names(dns_names, ips)
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None
    with contextlib.suppress(OSError, ValueError, TypeError):
        ca = _load(files.ca_cert, ca_key_path)
    if ca is None or not _usable(ca[0], now):
        ca = _make_ca(now)
        try:
            _write(ca_key_path, _key_pem(ca[1]), 0o600)
            _write(files.ca_cert, ca[0].public_bytes(serialization.Encoding.PEM), 0o644)
        except OSError as e:
            raise TlsError(f"cannot write the local CA in {directory}: {e}") from e
    server: x509.Certificate | None = None
    with contextlib.suppress(OSError, ValueError, TypeError):
        server = _load(files.server_cert, files.server_key)[0]
    if (
        server is None
        or not _usable(server, now)
        or not _covers(server, names)
        or not _issued_by(server, ca[0])
    ):
        cert, key = _make_server(ca[0], ca[1], names, now)
        try:
            _write(files.server_key, _key_pem(key), 0o600)
            _write(files.server_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        except OSError as e:
            raise TlsError(f"cannot write the server certificate in {directory}: {e}") from e
    return files
