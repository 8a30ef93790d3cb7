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

from qpq_p2p._config import PeerConfig
from qpq_p2p._discovery import PeerAddress, dialable
from qpq_p2p._errors import PeerAuthenticationError, PeerRefusedError, PeerUnreachableError
from qpq_p2p._groups import GroupRosters
from qpq_p2p._proof import DialerProof, Signer
from qpq_proto import (
    PEER_ALPN,
    ChallengeNonce,
    Done,
    PeerChallenge,
    PeerDeliver,
    PeerProof,
    Request,
)
from qpq_proto.errors import ServiceError
from qpq_proto.quic import Transport, call_result

__all__ = ["PeerLink", "dial"]


async def _prove(transport: Transport, proof: DialerProof, within: float) -> None:
    try:
        challenge = await call_result(
            transport, Request(PeerChallenge()), ChallengeNonce, answer_within=within
        )
        answer = await call_result(
            transport, Request(proof.authenticate(challenge)), PeerProof, answer_within=within
        )
    except ServiceError as refused:
        raise PeerAuthenticationError(refused.code, refused.message) from None
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
        try:
            await call_result(
                self.transport, Request(PeerDeliver(payload=payload)), Done, answer_within=within
            )
        except ServiceError as refused:
            raise PeerRefusedError(refused.code, refused.message) from None

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        await self.transport.close()


async def dial(
    address: PeerAddress,
    expected: bytes,
    *,
    identity: Signer,
    groups: GroupRosters,
    config: PeerConfig,
) -> PeerLink:
    """Connect to ``address`` and prove identities both ways; the peer must be ``expected``.

    Raises:
        PeerUnreachableError: ``address`` is no IP literal (names are never resolved).
        ConnectionFailedError: nothing answered, or the connection broke.
        PeerAuthenticationError: a proof failed either way (coded).
    """
    if not dialable(address):
        raise PeerUnreachableError("a peer address must be an IP address")
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
