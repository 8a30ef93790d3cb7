from __future__ import annotations

import pytest

from qpq_core import Identity, InvalidIdentityError, InvalidSignatureError, verify_signature


def test_generate_sign_verify() -> None:
    identity = Identity.generate()
    assert len(identity.public_key) == 32
    signature = identity.sign(b"challenge")
    assert len(signature) == 64
    verify_signature(identity.public_key, b"challenge", signature)


def test_restore_from_secret_gives_the_same_identity() -> None:
    identity = Identity.generate()
    secret = identity.secret_bytes()
    assert len(secret) == 32
    restored = Identity.from_secret_bytes(secret)
    assert restored.public_key == identity.public_key
    assert restored == identity
    # Ed25519 signatures are deterministic.
    assert restored.sign(b"m") == identity.sign(b"m")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda pk, msg, sig: (pk, msg + b"!", sig),
        lambda pk, msg, sig: (pk, msg, bytes([sig[0] ^ 1]) + sig[1:]),
        lambda pk, msg, sig: (Identity.generate().public_key, msg, sig),
        lambda pk, msg, sig: (pk[:31], msg, sig),
        lambda pk, msg, sig: (pk, msg, sig[:63]),
        lambda pk, msg, sig: (bytes(32), msg, sig),
    ],
)
def test_bad_signature_raises(mutate) -> None:  # type: ignore[no-untyped-def]
    identity = Identity.generate()
    args = mutate(identity.public_key, b"message", identity.sign(b"message"))
    with pytest.raises(InvalidSignatureError):
        verify_signature(*args)


@pytest.mark.parametrize("secret", [b"", b"\x00" * 31, b"\x00" * 33])
def test_secret_of_wrong_length_raises(secret: bytes) -> None:
    with pytest.raises(InvalidIdentityError):
        Identity.from_secret_bytes(secret)


def test_repr_shows_a_fingerprint_never_the_secret() -> None:
    identity = Identity.generate()
    text = repr(identity) + str(identity)
    assert identity.public_key[:8].hex() in text
    assert identity.secret_bytes().hex() not in text
    assert identity.secret_bytes()[:4].hex() not in text
    assert identity.public_key.hex() not in text
