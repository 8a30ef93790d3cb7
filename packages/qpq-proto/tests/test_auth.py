"""The transcripts an identity key signs: to a server, and between two peers."""

from __future__ import annotations

import pytest
from proto_samples import ALICE, BOB, FINGERPRINT_A, NONCE

from qpq_proto import (
    AUTH_DOMAIN,
    PEER_AUTH_DOMAIN,
    PeerRole,
    challenge_transcript,
    peer_transcript,
)
from qpq_proto.errors import InvalidArgumentError

OTHER_NONCE = bytes(range(200, 232))


def _peer(role: PeerRole, **changes: bytes) -> bytes:
    fields = {
        "listener_nonce": NONCE,
        "dialer_nonce": OTHER_NONCE,
        "listener_certificate": FINGERPRINT_A,
        "dialer_key": ALICE,
        "listener_key": BOB,
    }
    fields.update(changes)
    return peer_transcript(role, **fields)


def test_challenge_transcript_layout() -> None:
    transcript = challenge_transcript(NONCE, ALICE)
    assert transcript == b"qpq/1 connection auth\x00" + NONCE + ALICE
    assert transcript.startswith(AUTH_DOMAIN)
    assert len(transcript) == 86


def test_peer_transcript_layout() -> None:
    transcript = _peer(PeerRole.DIALER)
    assert transcript == (
        b"qpq-p2p/1 peer auth\x00" + b"\x01" + NONCE + OTHER_NONCE + FINGERPRINT_A + ALICE + BOB
    )
    assert transcript.startswith(PEER_AUTH_DOMAIN)
    assert len(transcript) == 20 + 1 + 5 * 32
    assert _peer(PeerRole.LISTENER)[20] == 2


def test_peer_transcripts_differ_in_everything_they_bind() -> None:
    # One side's proof is never the other's, nor valid on another connection.
    base = _peer(PeerRole.DIALER)
    assert _peer(PeerRole.LISTENER) != base
    for name in ("listener_nonce", "dialer_nonce", "listener_certificate"):
        assert _peer(PeerRole.DIALER, **{name: bytes(32)}) != base
    assert _peer(PeerRole.DIALER, dialer_key=BOB, listener_key=ALICE) != base
    # No transcript of one kind is a transcript of the other.
    assert not base.startswith(AUTH_DOMAIN)


@pytest.mark.parametrize(
    ("name", "field"),
    [
        ("listener_nonce", "nonce"),
        ("dialer_nonce", "nonce"),
        ("listener_certificate", "listener_certificate"),
        ("dialer_key", "identity_key"),
        ("listener_key", "identity_key"),
    ],
)
@pytest.mark.parametrize("length", [0, 31, 33])
def test_peer_transcript_fields_have_fixed_lengths(name: str, field: str, length: int) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        _peer(PeerRole.DIALER, **{name: b"\x01" * length})
    assert info.value.field == field


@pytest.mark.parametrize(("nonce", "key"), [(NONCE[:31], ALICE), (NONCE, ALICE[:31])])
def test_challenge_transcript_fields_have_fixed_lengths(nonce: bytes, key: bytes) -> None:
    with pytest.raises(InvalidArgumentError):
        challenge_transcript(nonce, key)
