"""Server-side KeyPackage validation."""

from __future__ import annotations

from dataclasses import dataclass

from qpq_core import _mls
from qpq_core._limits import MAX_KEY_PACKAGE_BYTES, check_size

__all__ = ["DEFAULT_MAX_LIFETIME_SECONDS", "KeyPackageInfo", "validate_key_package"]

#: 84 days plus the one hour of clock-skew margin OpenMLS puts before
#: ``not_before`` (RFC 9420 §10 leaves the policy to the application).
DEFAULT_MAX_LIFETIME_SECONDS = 84 * 24 * 3600 + 3600


@dataclass(frozen=True, slots=True)
class KeyPackageInfo:
    """What the directory learns from a valid KeyPackage.

    Attributes:
        identity_key: the 32-byte identity key (== the leaf signature key).
        ciphersuite: the MLS ciphersuite id, always 1 here.
        not_after: end of the KeyPackage's lifetime, unix seconds.
        fingerprint: SHA-256 of the uploaded bytes (the dedup key).
        last_resort: carries the last-resort extension (never consumed).
    """

    identity_key: bytes
    ciphersuite: int
    not_after: int
    fingerprint: bytes
    last_resort: bool


def validate_key_package(
    data: bytes,
    *,
    now: int | None = None,
    max_lifetime_seconds: int = DEFAULT_MAX_LIFETIME_SECONDS,
) -> KeyPackageInfo:
    """Validate a TLS-serialized ``MLSMessage(mls_key_package)``.

    Checks both signatures, that the lifetime holds at ``now`` (and at the
    system clock, which OpenMLS checks) with a range of at most
    ``max_lifetime_seconds``, the ciphersuite allowlist, and that the
    BasicCredential identity is 32 bytes and equals the signature key.

    Raises:
        MalformedMlsMessageError: not a KeyPackage MLSMessage, or too large.
        InvalidKeyPackageError: a check failed.
        UnsupportedCiphersuiteError: another ciphersuite.
        InvalidIdentityError: the credential does not match the key.
    """
    data = check_size(data, MAX_KEY_PACKAGE_BYTES)
    identity_key, ciphersuite, not_after, fingerprint, last_resort = _mls.validate_key_package(
        data, now, max_lifetime_seconds
    )
    return KeyPackageInfo(identity_key, ciphersuite, not_after, fingerprint, last_resort)
