"""What a connection signs to prove its identity key.

The server hands out a fresh 32-byte nonce per connection (Challenge); the
client signs ``transcript(nonce, identity_key)`` with its Ed25519 identity
key (Authenticate). The nonce lives only in that connection's server state,
so a signature cannot be replayed on another connection; the domain label
keeps the signature from meaning anything outside qpq's auth.
"""

from __future__ import annotations

from qpq_proto._limits import IDENTITY_KEY_BYTES
from qpq_proto._messages import NONCE_BYTES
from qpq_proto.errors import InvalidArgumentError

__all__ = ["AUTH_DOMAIN", "challenge_transcript"]

AUTH_DOMAIN = b"qpq/1 connection auth\x00"


def challenge_transcript(nonce: bytes, identity_key: bytes) -> bytes:
    """The bytes an identity signs to answer ``nonce``."""
    if len(nonce) != NONCE_BYTES:
        raise InvalidArgumentError(f"nonce must be {NONCE_BYTES} bytes", field="nonce")
    if len(identity_key) != IDENTITY_KEY_BYTES:
        raise InvalidArgumentError("identity_key must be 32 bytes", field="identity_key")
    return AUTH_DOMAIN + nonce + identity_key
