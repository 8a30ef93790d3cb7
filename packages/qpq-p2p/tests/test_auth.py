"""The mutual identity proof: impostors, replays and strangers are refused with coded errors."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from p2p_helpers import LOCAL, AddressBook, Member, build_group, nodes

from qpq_core import Identity
from qpq_p2p import DialerProof, PeerAuthenticationError
from qpq_proto import (
    PEER_ALPN,
    ChallengeNonce,
    ErrorCode,
    ErrorResponse,
    Health,
    PeerAuthenticate,
    PeerChallenge,
    PeerDeliver,
    PeerProof,
    PeerRole,
    Request,
    decode_response,
    encode_request,
    peer_transcript,
)
from qpq_proto.quic import Transport


@asynccontextmanager
async def connection(port: int) -> AsyncIterator[Transport]:
    transport = await Transport.open(
        LOCAL, port, alpn=PEER_ALPN, in_band_identity_proof=True, connect_timeout=5
    )
    try:
        yield transport
    finally:
        await transport.close()


async def ask(transport: Transport, call: object) -> object:
    return await transport.call(Request(call), answer_within=10)  # type: ignore[arg-type]


async def challenge(transport: Transport) -> ChallengeNonce:
    nonce = await ask(transport, PeerChallenge())
    assert isinstance(nonce, ChallengeNonce)
    return nonce


def refused(answer: object, code: ErrorCode) -> str:
    assert isinstance(answer, ErrorResponse), answer
    assert answer.code is code, answer
    return answer.message


async def prove(transport: Transport, member: Member, listener: bytes) -> PeerAuthenticate:
    """A genuine proof by ``member`` for this connection (DialerProof, as a node makes it)."""
    proof = DialerProof(member.identity, member.mls, listener, transport.peer_certificate_der())
    return proof.authenticate(await challenge(transport))


async def claim_for(
    link: Transport, dialer_key: bytes, listener_key: bytes, *, signer: Identity
) -> PeerAuthenticate:
    """A proof claiming ``dialer_key`` for this connection, signed by ``signer``."""
    nonce = await challenge(link)
    dialer_nonce = bytes(range(32))
    transcript = peer_transcript(
        PeerRole.DIALER,
        listener_nonce=nonce.nonce,
        dialer_nonce=dialer_nonce,
        listener_certificate=_fingerprint(link),
        dialer_key=dialer_key,
        listener_key=listener_key,
    )
    return PeerAuthenticate(dialer_key, dialer_nonce, signer.sign(transcript))


async def test_a_member_proves_itself_and_gets_the_listeners_proof() -> None:
    (alice, bob), _group = build_group(2)
    async with nodes([bob], AddressBook()) as (bob_node,), connection(bob_node.port) as link:
        proof = DialerProof(alice.identity, alice.mls, bob.key, link.peer_certificate_der())
        answer = await ask(link, proof.authenticate(await challenge(link)))
        assert isinstance(answer, PeerProof)
        assert answer.identity_key == bob.key
        proof.verify(answer)  # raises unless it is bob, for this connection


async def test_an_impostor_claiming_a_members_key_is_unauthenticated() -> None:
    (alice, bob), _group = build_group(2)
    mallory = Identity.generate()
    async with nodes([bob], AddressBook()) as (bob_node,), connection(bob_node.port) as link:
        claim = await claim_for(link, alice.key, bob.key, signer=mallory)
        message = refused(await ask(link, claim), ErrorCode.UNAUTHENTICATED)
        assert "does not verify" in message
        # Nothing was admitted: a delivery is refused too.
        refused(await ask(link, PeerDeliver(b"x")), ErrorCode.UNAUTHENTICATED)


async def test_a_replayed_proof_is_unauthenticated() -> None:
    (alice, bob), _group = build_group(2)
    async with nodes([bob], AddressBook()) as (bob_node,):
        async with connection(bob_node.port) as first:
            recorded = await prove(first, alice, bob.key)
            assert isinstance(await ask(first, recorded), PeerProof)
            # On the same connection the nonce is spent, whatever comes next.
            message = refused(await ask(first, recorded), ErrorCode.UNAUTHENTICATED)
            assert "PeerChallenge" in message
            await challenge(first)
            refused(await ask(first, recorded), ErrorCode.UNAUTHENTICATED)
        # On another connection it answers no nonce of that connection.
        async with connection(bob_node.port) as second:
            await challenge(second)
            refused(await ask(second, recorded), ErrorCode.UNAUTHENTICATED)


async def test_a_relayed_proof_names_the_relays_certificate_and_is_refused() -> None:
    # Alice's proof made on a connection to someone else (a relay terminating
    # TLS) names that connection's certificate; the real listener refuses it.
    (alice, bob), _group = build_group(2)
    async with (
        nodes([bob], AddressBook()) as (bob_node,),
        connection(bob_node.port) as to_bob,
        nodes([Member(Identity.generate())], AddressBook()) as (relay_node,),
        connection(relay_node.port) as to_relay,
    ):
        bob_nonce = await challenge(to_bob)
        proof = DialerProof(alice.identity, alice.mls, bob.key, to_relay.peer_certificate_der())
        relayed = proof.authenticate(bob_nonce)  # the relay passed Bob's nonce along
        refused(await ask(to_bob, relayed), ErrorCode.UNAUTHENTICATED)


async def test_a_stranger_with_a_valid_proof_is_forbidden() -> None:
    (_alice, bob), _group = build_group(2)
    (stranger, _other), _their_group = build_group(2)
    async with nodes([bob], AddressBook()) as (bob_node,), connection(bob_node.port) as link:
        own = await claim_for(link, stranger.key, bob.key, signer=stranger.identity)
        message = refused(await ask(link, own), ErrorCode.FORBIDDEN)
        assert "not a member" in message
        refused(await ask(link, PeerDeliver(b"x")), ErrorCode.UNAUTHENTICATED)


async def test_a_node_refuses_to_dial_a_stranger_and_an_impostor_listener() -> None:
    (alice, bob, mallory), group_id = build_group(3)
    book = AddressBook()
    async with nodes([alice, mallory], book) as (alice_node, mallory_node):
        # Bob's address in the book is where Mallory (a member) listens.
        book.add(bob.key, mallory_node.port)
        message = alice.mls.encrypt(group_id, b"for bob").message
        published: list[bytes] = []

        async def via_server() -> None:
            published.append(message)

        report = await alice_node.send(message, via_server=via_server)
        failed = {f.recipient: f.reason for f in report.failed}
        # Alice's proof names Bob as the listener: Mallory's check of it fails.
        assert "unauthenticated" in failed[bob.key]
        assert mallory.texts == [(alice.key, b"for bob")]  # Mallory is a member: direct is fine
        assert bob.key not in report.direct
        assert published == [message]
        # And a key that shares no group with Alice is never dialed.
        stranger = Identity.generate().public_key
        with pytest.raises(PeerAuthenticationError) as error:
            DialerProof(alice.identity, alice.mls, stranger, b"cert")
        assert error.value.code is ErrorCode.FORBIDDEN


def test_a_listener_proof_for_another_key_or_connection_is_refused() -> None:
    (alice, bob, carol), _group = build_group(3)
    der = b"the listener's certificate"
    proof = DialerProof(alice.identity, alice.mls, bob.key, der)
    sent = proof.authenticate(ChallengeNonce(nonce=bytes(32)))
    fields = {
        "listener_nonce": bytes(32),
        "dialer_nonce": sent.nonce,
        "listener_certificate": _sha256(der),
        "dialer_key": alice.key,
    }
    # Carol answers in Bob's place, with her own valid proof: another identity.
    carols = carol.identity.sign(
        peer_transcript(PeerRole.LISTENER, listener_key=carol.key, **fields)
    )
    with pytest.raises(PeerAuthenticationError) as error:
        proof.verify(PeerProof(carol.key, carols))
    assert error.value.code is ErrorCode.FORBIDDEN
    # Bob's key with a signature that is not Bob's, or is Bob's dialer-role signature.
    for signature in (
        carol.identity.sign(peer_transcript(PeerRole.LISTENER, listener_key=bob.key, **fields)),
        bob.identity.sign(peer_transcript(PeerRole.DIALER, listener_key=bob.key, **fields)),
    ):
        with pytest.raises(PeerAuthenticationError) as error:
            proof.verify(PeerProof(bob.key, signature))
        assert error.value.code is ErrorCode.UNAUTHENTICATED
    # Bob's real listener proof passes.
    proof.verify(
        PeerProof(
            bob.key,
            bob.identity.sign(peer_transcript(PeerRole.LISTENER, listener_key=bob.key, **fields)),
        )
    )


async def test_only_application_messages_of_a_shared_group_are_admitted() -> None:
    (alice, bob), group_id = build_group(2)
    carol, other_group = _second_group(bob)
    async with nodes([bob], AddressBook()) as (bob_node,), connection(bob_node.port) as link:
        assert isinstance(await ask(link, await prove(link, alice, bob.key)), PeerProof)
        # A commit travels through the server, which orders it.
        commit = alice.mls.self_update(group_id).commit
        message = refused(await ask(link, PeerDeliver(commit)), ErrorCode.INVALID_ARGUMENT)
        assert "application" in message
        refused(await ask(link, PeerDeliver(b"not mls")), ErrorCode.INVALID_ARGUMENT)
        # A message of a group Alice is not in (Bob and Carol's), relayed by Alice.
        foreign = carol.mls.encrypt(other_group, b"not yours").message
        refused(await ask(link, PeerDeliver(foreign)), ErrorCode.FORBIDDEN)
        assert bob.texts == []
        # Anything but a peer call is not answered here.
        answer = decode_response(await link.raw(encode_request(Request(Health()))))
        refused(answer, ErrorCode.UNSUPPORTED_CALL)


async def test_a_connection_that_proves_nothing_is_closed_after_the_deadline() -> None:
    (_alice, bob), _group = build_group(2)
    async with (
        nodes([bob], AddressBook(), authenticate_timeout_seconds=0.5) as (bob_node,),
        connection(bob_node.port) as idle,
    ):
        await challenge(idle)
        await asyncio.wait_for(idle.wait_closed(), 10)
        assert idle.closed_reason == "no identity proven within 0.5 s"


def _second_group(bob: Member) -> tuple[Member, bytes]:
    """A new member Carol, and a second group of hers that Bob joins."""
    carol = Member(Identity.generate())
    group_id = carol.mls.create_group().group_id
    bundle = carol.mls.add_members(group_id, [bob.mls.create_key_packages(1).packages[0]])
    carol.mls.merge_pending_commit(group_id)
    assert bundle.welcome is not None
    bob.mls.join_from_welcome(bundle.welcome)
    return carol, group_id


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _fingerprint(transport: Transport) -> bytes:
    der = transport.peer_certificate_der()
    assert der is not None
    return _sha256(der)


async def test_nodes_of_two_members_connect_both_ways() -> None:
    # A sanity check of the whole handshake through nodes only.
    (alice, bob), _group = build_group(2)
    book = AddressBook()
    async with nodes([alice, bob], book) as (alice_node, bob_node):
        assert [p.reachable for p in await alice_node.probe()] == [True]
        assert [p.reachable for p in await bob_node.probe(alice.key)] == [True]
