"""The listener's TLS certificate: self-signed, fresh per node, trusted by nobody.

QUIC needs a certificate on the listening side; nothing checks it against a
CA or a pin (there is none between two clients). What it is for: the
dialing peer binds both identity proofs to its SHA-256
(:func:`qpq_proto.peer_transcript`), and aioquic's CertificateVerify check
proves the listener holds its private key, so a proof made through a relay
that terminates TLS names the relay's certificate and the listener refuses
it. It names nobody: the subject is a fixed string, never an identity key,
so a stranger who connects learns nothing from it.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

__all__ = ["DeviceCertificate"]

_SUBJECT = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "qpq peer")])


@dataclass(frozen=True, slots=True)
class DeviceCertificate:
    """An Ed25519 key and the self-signed certificate over it."""

    certificate: x509.Certificate
    private_key: ed25519.Ed25519PrivateKey = field(repr=False)

    @classmethod
    def generate(
        cls, *, now: datetime.datetime | None = None, valid_days: int = 365
    ) -> DeviceCertificate:
        """A new key and certificate (validity is not checked by peers; it is only well-formed)."""
        key = ed25519.Ed25519PrivateKey.generate()
        start = (now or datetime.datetime.now(datetime.UTC)) - datetime.timedelta(minutes=5)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_SUBJECT)
            .issuer_name(_SUBJECT)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, None)
        )
        return cls(certificate=certificate, private_key=key)

    @property
    def der(self) -> bytes:
        """The certificate's DER encoding, as the handshake carries it."""
        return self.certificate.public_bytes(Encoding.DER)

    @property
    def fingerprint(self) -> bytes:
        """SHA-256 of the DER: what both peers' proofs are bound to."""
        return hashlib.sha256(self.der).digest()
