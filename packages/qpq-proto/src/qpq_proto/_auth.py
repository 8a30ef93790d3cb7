"""What a connection signs to prove its identity key: to a server, and between peers.

To a server: the server hands out a fresh 32-byte nonce per connection
(Challenge); the client signs ``challenge_transcript(nonce, identity_key)``
with its Ed25519 identity key (Authenticate). The nonce lives only in that
connection's server state, so a signature cannot be replayed on another
connection; the domain label keeps the signature from meaning anything
outside qpq's auth.

Between peers (ALPN ``qpq-p2p/1``) each side proves its key to the other on
the connection: the dialing peer signs :func:`peer_transcript` in the
dialer's role (PeerAuthenticate), the listening peer in the listener's role
(PeerProof). Both transcripts hold both fresh nonces, both identity keys
and the SHA-256 of the listening peer's TLS certificate, which the dialer
saw in this connection's handshake (whose CertificateVerify proves the
listener holds its key): a proof made on one connection is worthless on
any other, and one side's proof cannot be reflected as the other's.
"""

from __future__ import annotations

import enum

from qpq_proto._limits import IDENTITY_KEY_BYTES
from qpq_proto._messages import FINGERPRINT_BYTES, NONCE_BYTES
from qpq_proto.errors import InvalidArgumentError

__all__ = ["AUTH_DOMAIN", "PEER_AUTH_DOMAIN", "PeerRole", "challenge_transcript", "peer_transcript"]

AUTH_DOMAIN = b"qpq/1 connection auth\x00"
PEER_AUTH_DOMAIN = b"qpq-p2p/1 peer auth\x00"


class PeerRole(enum.IntEnum):
    """Which side of a peer connection signs; its value is the transcript's role byte."""

    DIALER = 1
    LISTENER = 2


def _exact(name: str, value: bytes, length: int) -> None:
    if len(value) != length:
        raise InvalidArgumentError(f"{name} must be {length} bytes", field=name)


def challenge_transcript(nonce: bytes, identity_key: bytes) -> bytes:
    """The bytes an identity signs to answer ``nonce``."""
    _exact("nonce", nonce, NONCE_BYTES)
    _exact("identity_key", identity_key, IDENTITY_KEY_BYTES)
    return AUTH_DOMAIN + nonce + identity_key


def peer_transcript(
    role: PeerRole,
    *,
    listener_nonce: bytes,
    dialer_nonce: bytes,
    listener_certificate: bytes,
    dialer_key: bytes,
    listener_key: bytes,
) -> bytes:
    """The bytes a peer signs to prove its identity key on one peer connection.

    Args:
        role: who signs: the dialing peer or the listening peer.
        listener_nonce: the 32 bytes the listening peer answered PeerChallenge with.
        dialer_nonce: the 32 bytes the dialing peer sent in PeerAuthenticate.
        listener_certificate: SHA-256 of the DER certificate the listening
            peer presented in this connection's TLS handshake.
        dialer_key, listener_key: both identity keys.
    """
    _exact("nonce", listener_nonce, NONCE_BYTES)
    _exact("nonce", dialer_nonce, NONCE_BYTES)
    _exact("listener_certificate", listener_certificate, FINGERPRINT_BYTES)
    _exact("identity_key", dialer_key, IDENTITY_KEY_BYTES)
    _exact("identity_key", listener_key, IDENTITY_KEY_BYTES)
    return (
        PEER_AUTH_DOMAIN
        + bytes([PeerRole(role)])
        + listener_nonce
        + dialer_nonce
        + listener_certificate
        + dialer_key
        + listener_key
    )
