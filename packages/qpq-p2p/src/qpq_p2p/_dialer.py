"""The dialing side: a connection to one peer, proven both ways, then deliveries on it.

Every outgoing connection goes through :class:`qpq_proto.quic.Transport`,
the project's one calling adapter, opened with ``in_band_identity_proof``:
the peer's self-signed certificate is checked against nothing, and the
mutual proof (:class:`~qpq_p2p._proof.DialerProof`) runs before anything
else on the connection, so a link exists only once both sides proved the
keys they claim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from qpq_p2p._config import PeerConfig
from qpq_p2p._discovery import PeerAddress
from qpq_p2p._errors import PeerAuthenticationError, PeerRefusedError
from qpq_p2p._groups import GroupState
from qpq_p2p._proof import DialerProof, Signer
from qpq_proto import (
    PEER_ALPN,
    Call,
    ChallengeNonce,
    Done,
    ErrorResponse,
    PeerChallenge,
    PeerDeliver,
    PeerProof,
    Request,
    Result,
)
from qpq_proto.errors import MalformedMessageError
from qpq_proto.quic import Transport

__all__ = ["PeerLink", "dial"]

_R = TypeVar("_R", bound=Result)


async def _call(
    transport: Transport, call: Call, expected: type[_R], within: float
) -> _R | ErrorResponse:
    answer = await transport.call(Request(call), answer_within=within)
    if isinstance(answer, ErrorResponse | expected):
        return answer
    raise MalformedMessageError(f"{type(answer).__name__} does not answer {type(call).__name__}")


async def _prove(transport: Transport, proof: DialerProof, within: float) -> None:
    challenge = await _call(transport, PeerChallenge(), ChallengeNonce, within)
    if isinstance(challenge, ErrorResponse):
        raise PeerAuthenticationError(challenge.code, challenge.message)
    answer = await _call(transport, proof.authenticate(challenge), PeerProof, within)
    if isinstance(answer, ErrorResponse):
        raise PeerAuthenticationError(answer.code, answer.message)
    proof.verify(answer)


@dataclass(slots=True)
class PeerLink:
    """A connection to one peer whose identity key both sides proved."""

    identity_key: bytes
    address: PeerAddress
    transport: Transport

    @property
    def lost(self) -> bool:
        """The connection ended (idle timeout, the peer closed it, the network)."""
        return self.transport.closed_reason is not None

    async def deliver(self, payload: bytes, *, within: float) -> None:
        """Hand one MLS application message over; return once the peer's host persisted it.

        Raises:
            PeerRefusedError: the peer answered a coded error (nothing persisted there).
            ConnectionFailedError: lost, or no acknowledgement within ``within`` seconds.
            RemoteProtocolError: the peer broke the protocol.
        """
        answer = await _call(self.transport, PeerDeliver(payload=payload), Done, within)
        if isinstance(answer, ErrorResponse):
            raise PeerRefusedError(answer.code, answer.message)

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        await self.transport.close()


async def dial(
    address: PeerAddress,
    expected: bytes,
    *,
    identity: Signer,
    groups: GroupState,
    config: PeerConfig,
) -> PeerLink:
    """Connect to ``address`` and prove identities both ways; the peer must be ``expected``.

    Raises:
        ConnectionFailedError: nothing answered, or the connection broke.
        PeerAuthenticationError: a proof failed either way (coded).
    """
    transport = await Transport.open(
        address.host,
        address.port,
        alpn=PEER_ALPN,
        in_band_identity_proof=True,
        connect_timeout=config.connect_timeout_seconds,
        idle_timeout=config.idle_timeout_seconds,
        limits=config.limits,
        peer_name="the peer",
    )
    try:
        proof = DialerProof(identity, groups, expected, transport.peer_certificate_der())
        await _prove(transport, proof, config.connect_timeout_seconds)
    except BaseException:
        await transport.close()
        raise
    return PeerLink(identity_key=expected, address=address, transport=transport)
