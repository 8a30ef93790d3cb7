"""TLS material: load a certificate and key (PEM or DER), or make a dev one.

The generated development certificate is self-signed, valid for
``localhost``, ``127.0.0.1`` and ``::1``, and its key file is created with
mode 0600 before a byte of key is written. Clients pin it by the SHA-256 of
the certificate's DER encoding, which :func:`fingerprint` returns.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from qpq_server._errors import ConfigError

__all__ = ["TlsMaterial", "fingerprint", "generate_self_signed", "load_tls"]

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

_DEV_VALIDITY = datetime.timedelta(days=825)


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """A leaf certificate, its chain and private key, ready for QUIC."""

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    private_key: PrivateKey = field(repr=False)
    cert_path: Path

    @property
    def fingerprint(self) -> str:
        """SHA-256 hex of the leaf certificate's DER encoding."""
        return fingerprint(self.certificate)


def fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 hex of ``certificate``'s DER encoding (what clients pin)."""
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def _load_certificates(path: Path, setting: str) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(setting, f"cannot read {path}: {error.strerror or error}") from None
    try:
        if b"-----BEGIN" in data:
            certificates = x509.load_pem_x509_certificates(data)
        else:
            certificates = [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise ConfigError(setting, f"{path} is not a PEM or DER certificate") from None
    if not certificates:
        raise ConfigError(setting, f"{path} holds no certificate")
    return certificates


def _load_key(path: Path, setting: str) -> PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(setting, f"cannot read {path}: {error.strerror or error}") from None
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigError(setting, f"{path} is not an unencrypted PEM or DER private key") from None
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise ConfigError(setting, "the key must be ECDSA, RSA or Ed25519")
    return key


def load_tls(cert_path: Path, key_path: Path) -> TlsMaterial:
    """Load a certificate (chain) and its key; check that they belong together.

    Raises:
        ConfigError: unreadable, malformed or mismatched files (names the setting).
    """
    certificates = _load_certificates(cert_path, "tls_cert")
    key = _load_key(key_path, "tls_key")
    cert_public = (
        certificates[0]
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    key_public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if cert_public != key_public:
        raise ConfigError("tls_key", "the private key does not match the certificate")
    return TlsMaterial(
        certificate=certificates[0],
        chain=tuple(certificates[1:]),
        private_key=key,
        cert_path=cert_path,
    )


def _write_private(path: Path, data: bytes) -> None:
    # O_EXCL + 0600 at creation: the key is never readable by others, not even briefly.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def generate_self_signed(
    cert_path: Path,
    key_path: Path,
    *,
    hostnames: tuple[str, ...] = ("localhost",),
    addresses: tuple[str, ...] = ("127.0.0.1", "::1"),
) -> TlsMaterial:
    """Create a self-signed ECDSA P-256 certificate and key (PEM, key mode 0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "qpq-server development")])
    now = datetime.datetime.now(datetime.UTC)
    san: list[x509.GeneralName] = [x509.DNSName(host) for host in hostnames]
    san += [x509.IPAddress(ipaddress.ip_address(address)) for address in addresses]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _DEV_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    # Usually the data dir, which also holds the database: private (0700).
    cert_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    cert_tmp = cert_path.with_name(f".{cert_path.name}.tmp")
    cert_tmp.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    cert_tmp.replace(cert_path)
    return TlsMaterial(certificate=certificate, chain=(), private_key=key, cert_path=cert_path)
