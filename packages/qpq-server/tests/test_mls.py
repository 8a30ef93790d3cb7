"""The MLS checks the server runs through qpq-core: the wire code, field and
message of every KeyPackage rejection (no OpenMLS text reaches a peer)."""

from __future__ import annotations

import time

import pytest
from server_helpers import key_packages, resigned_with_ciphersuite

import qpq_core
from qpq_proto.errors import (
    ErrorCode,
    InvalidArgumentError,
    InvalidKeyPackageError,
    UnauthenticatedError,
    UnsupportedCiphersuiteError,
)
from qpq_server import _mls

LIFETIME = 84 * 24 * 3600 + 3600


def _validate(data: bytes, *, now: int | None = None) -> None:
    _mls.validate_key_package(
        data, now=int(time.time()) if now is None else now, max_lifetime_seconds=LIFETIME
    )


@pytest.fixture
def package() -> tuple[qpq_core.Identity, bytes]:
    identity = qpq_core.Identity.generate()
    return identity, key_packages(identity, 1)[0]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda p: b"garbage", "not a KeyPackage message"),
        (lambda p: p + b"\x00", "not a KeyPackage message"),
        (lambda p: p[:-1] + bytes([p[-1] ^ 1]), "signature, lifetime or extension check failed"),
    ],
)
def test_rejected_key_package_is_invalid_key_package_on_packages(
    package: tuple[qpq_core.Identity, bytes],
    mutate,
    reason: str,  # type: ignore[no-untyped-def]
) -> None:
    _, data = package
    with pytest.raises(InvalidKeyPackageError) as caught:
        _validate(mutate(data))
    assert caught.value.code is ErrorCode.INVALID_KEY_PACKAGE
    assert caught.value.field == "packages"
    assert caught.value.message == f"KeyPackage rejected: {reason}"


def test_expired_key_package_is_invalid(package: tuple[qpq_core.Identity, bytes]) -> None:
    _, data = package
    with pytest.raises(InvalidKeyPackageError) as caught:
        _validate(data, now=int(time.time()) + 365 * 24 * 3600)
    assert (caught.value.field, caught.value.message) == (
        "packages",
        "KeyPackage rejected: signature, lifetime or extension check failed",
    )


def test_other_ciphersuite_is_unsupported_on_packages(
    package: tuple[qpq_core.Identity, bytes],
) -> None:
    identity, data = package
    with pytest.raises(UnsupportedCiphersuiteError) as caught:
        _validate(resigned_with_ciphersuite(identity, data, 0x0003))
    assert caught.value.code is ErrorCode.UNSUPPORTED_CIPHERSUITE
    assert caught.value.field == "packages"
    assert caught.value.message == (
        "only MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519 (0x0001) and "
        "MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519 (0x004D) are accepted"
    )


def test_valid_key_package_facts(package: tuple[qpq_core.Identity, bytes]) -> None:
    identity, data = package
    facts = _mls.validate_key_package(data, now=int(time.time()), max_lifetime_seconds=LIFETIME)
    assert facts.identity_key == identity.public_key
    assert facts.last_resort is False


def test_bad_signature_and_non_mls_payload() -> None:
    identity = qpq_core.Identity.generate()
    with pytest.raises(UnauthenticatedError):
        _mls.verify_signature(identity.public_key, b"m", bytes(64))
    with pytest.raises(InvalidArgumentError) as caught:
        _mls.peek_message(b"not mls")
    assert caught.value.field == "payload"
