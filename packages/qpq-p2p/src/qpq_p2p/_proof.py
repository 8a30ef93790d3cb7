"""Mutual identity proof on one peer connection, both sides, without I/O.

The dialing peer (the QUIC client) asks ``PeerChallenge`` and gets the
listener's fresh nonce; it signs the peer transcript in the dialer's role
and sends ``PeerAuthenticate`` with its key and its own fresh nonce; the
listener checks it and answers ``PeerProof``, its signature over the same
transcript in the listener's role. Each transcript holds both nonces, both
identity keys and the SHA-256 of the listener's TLS certificate
(:func:`qpq_proto.peer_transcript`).

Why the certificate and not a TLS exporter (RFC 5705/8446 §7.5, RFC 9266):
aioquic 1.x derives no exporter secret and offers no access to its key
schedule, and its server side requests no client certificate. The
listener's certificate is what both ends see of this connection: the dialer
reads it from the handshake, whose CertificateVerify aioquic always checks,
and the listener knows its own. A relay that terminates TLS shows the
dialer its own certificate, so the dialer's proof names the relay's
fingerprint and the listener refuses it; the nonces make every proof good
for one connection once.

A side is accepted only if its key is a member, in the verifier's own MLS
state, of a group the verifier is in too; the dialer also requires the key
it dialed. Refusals are coded: ``unauthenticated`` for a proof that does
not verify here (an impostor, a replay), ``forbidden`` for a stranger.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Protocol

from qpq_core import MlsError, MlsMessageKind, peek_message, verify_signature
from qpq_p2p._delivery import DirectMessage, message_digest
from qpq_p2p._errors import PeerAuthenticationError
from qpq_p2p._groups import GroupRosters, group_members, shared_groups
from qpq_proto import (
    NONCE_BYTES,
    Call,
    ChallengeNonce,
    PeerAuthenticate,
    PeerChallenge,
    PeerDeliver,
    PeerProof,
    PeerRole,
    Result,
    peer_transcript,
)
from qpq_proto.errors import (
    ErrorCode,
    ForbiddenError,
    InvalidArgumentError,
    UnauthenticatedError,
    UnsupportedCallError,
)
from qpq_proto.quic import certificate_fingerprint

__all__ = ["DialerProof", "ListenerGate", "Signer"]


class Signer(Protocol):
    """An identity: ``qpq_core.Identity`` or anything with these two members."""

    @property
    def public_key(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...


def _verifies(key: bytes, transcript: bytes, signature: bytes) -> bool:
    try:
        verify_signature(key, transcript, signature)
    except MlsError:
        return False
    return True


class ListenerGate:
    """The listening side of one incoming connection: what it answers, and to whom.

    Args:
        identity: our identity (signs our proof).
        groups: our MLS state (who is a member where).
        certificate: SHA-256 of our TLS certificate's DER.
        random: source of nonces (injected by tests).
    """

    def __init__(
        self,
        identity: Signer,
        groups: GroupRosters,
        certificate: bytes,
        *,
        random: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._identity = identity
        self._groups = groups
        self._certificate = certificate
        self._random = random
        self._nonce: bytes | None = None
        #: The dialing peer's identity key, once it proved it.
        self.proven: bytes | None = None

    def handle(self, call: Call) -> Result | DirectMessage:
        """The answer to ``call``, or the message to hand to the host (then answer Done).

        Raises:
            ServiceError: the coded refusal to answer with.
        """
        if isinstance(call, PeerChallenge):
            return self.challenge()
        if isinstance(call, PeerAuthenticate):
            return self.authenticate(call)
        if isinstance(call, PeerDeliver):
            return self.admit(call)
        raise UnsupportedCallError(f"a peer answers peer calls only, not {type(call).__name__}")

    def challenge(self) -> ChallengeNonce:
        """A fresh nonce; it replaces any earlier one of this connection."""
        self._nonce = self._random(NONCE_BYTES)
        return ChallengeNonce(nonce=self._nonce)

    def authenticate(self, call: PeerAuthenticate) -> PeerProof:
        """Check the dialer's proof; answer ours.

        Raises:
            UnauthenticatedError: no outstanding nonce, or the signature does
                not verify for this connection (the nonce is spent either way).
            ForbiddenError: the key is no member of a group we are in.
        """
        nonce, self._nonce = self._nonce, None
        if nonce is None:
            raise UnauthenticatedError("ask for a PeerChallenge on this connection first")
        me = self._identity.public_key
        fields = {
            "listener_nonce": nonce,
            "dialer_nonce": call.nonce,
            "listener_certificate": self._certificate,
            "dialer_key": call.identity_key,
            "listener_key": me,
        }
        transcript = peer_transcript(PeerRole.DIALER, **fields)
        if not _verifies(call.identity_key, transcript, call.signature):
            raise UnauthenticatedError(
                "the identity proof does not verify for this connection", field="signature"
            )
        if not shared_groups(self._groups, me, call.identity_key):
            raise ForbiddenError("this identity is not a member of any group we are in")
        self.proven = call.identity_key
        signature = self._identity.sign(peer_transcript(PeerRole.LISTENER, **fields))
        return PeerProof(identity_key=me, signature=signature)

    def admit(self, call: PeerDeliver) -> DirectMessage:
        """Check a delivered message before the host sees it.

        Raises:
            UnauthenticatedError: the dialer has not proven an identity.
            InvalidArgumentError: not an MLS application message (commits
                and proposals go through the server, which orders them).
            ForbiddenError: the dialer is no member of the message's group.
        """
        if self.proven is None:
            raise UnauthenticatedError("prove an identity on this connection first")
        try:
            info = peek_message(call.payload)
        except MlsError:
            raise InvalidArgumentError("not an MLS message", field="payload") from None
        if (
            info.kind is not MlsMessageKind.APPLICATION
            or info.wire_format != "private"
            or info.group_id is None
            or info.epoch is None
        ):
            raise InvalidArgumentError(
                "only application messages travel directly; handshakes go through the server",
                field="payload",
            )
        if self.proven not in group_members(self._groups, info.group_id):
            raise ForbiddenError("the sender is not a member of this message's group")
        return DirectMessage(
            sender=self.proven,
            group_id=info.group_id,
            epoch=info.epoch,
            payload=call.payload,
            digest=message_digest(call.payload),
        )


class DialerProof:
    """The dialing side's proof for one connection to the peer it means to reach.

    Args:
        identity: our identity.
        groups: our MLS state.
        expected: the identity key we dialed.
        certificate_der: the certificate the listener presented on this connection.
        random: source of our nonce.

    Raises:
        PeerAuthenticationError: no certificate, or ``expected`` shares no group with us.
    """

    def __init__(
        self,
        identity: Signer,
        groups: GroupRosters,
        expected: bytes,
        certificate_der: bytes | None,
        *,
        random: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        if certificate_der is None:
            raise PeerAuthenticationError(
                ErrorCode.UNAUTHENTICATED, "the peer presented no certificate"
            )
        if not shared_groups(groups, identity.public_key, expected):
            raise PeerAuthenticationError(
                ErrorCode.FORBIDDEN, "that identity is not a member of any group we are in"
            )
        self._identity = identity
        self._expected = expected
        self._certificate = bytes.fromhex(certificate_fingerprint(certificate_der))
        self._nonce = random(NONCE_BYTES)
        self._fields: dict[str, bytes] | None = None

    def authenticate(self, challenge: ChallengeNonce) -> PeerAuthenticate:
        """Our proof, answering the listener's nonce."""
        me = self._identity.public_key
        self._fields = {
            "listener_nonce": challenge.nonce,
            "dialer_nonce": self._nonce,
            "listener_certificate": self._certificate,
            "dialer_key": me,
            "listener_key": self._expected,
        }
        signature = self._identity.sign(peer_transcript(PeerRole.DIALER, **self._fields))
        return PeerAuthenticate(identity_key=me, nonce=self._nonce, signature=signature)

    def verify(self, proof: PeerProof) -> None:
        """Check the listener's proof; return only if it is the peer we dialed.

        Raises:
            PeerAuthenticationError: another identity answered (``forbidden``),
                or its signature does not verify for this connection
                (``unauthenticated``).
        """
        if self._fields is None:
            raise PeerAuthenticationError(ErrorCode.UNAUTHENTICATED, "no proof was asked for")
        if proof.identity_key != self._expected:
            raise PeerAuthenticationError(
                ErrorCode.FORBIDDEN, "another identity than the one dialed answered"
            )
        transcript = peer_transcript(PeerRole.LISTENER, **self._fields)
        if not _verifies(proof.identity_key, transcript, proof.signature):
            raise PeerAuthenticationError(
                ErrorCode.UNAUTHENTICATED, "the peer's proof does not verify for this connection"
            )
