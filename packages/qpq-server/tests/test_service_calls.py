"""Every call's happy path and the coded errors it can answer with, over real QUIC."""

from __future__ import annotations

import asyncio
import os
import struct

import pytest
from groups import (
    application,
    build_group,
    claim,
    commit_call,
    commit_hash,
    create_group,
    drain,
    fetch_all,
    members,
    plaintexts,
    process,
    publish_commit,
    receive,
    rejoin,
    send,
    snapshot,
)
from server_helpers import authed, key_packages, resigned_with_ciphersuite

import qpq_core
from qpq_proto import (
    NO_SENDER,
    AccountStatus,
    Ack,
    Acked,
    Authenticate,
    Challenge,
    CountKeyPackages,
    CreateGroup,
    DeleteAccount,
    Endpoint,
    ErrorCode,
    ErrorResponse,
    Fetch,
    FetchGroupInfo,
    FetchKeyPackage,
    FetchWait,
    Health,
    MessageKind,
    Publish,
    PublishEndpoints,
    RegisterUser,
    Request,
    ResolveEndpoints,
    ResolveIdentities,
    ResolveIdentity,
    ResolveUser,
    UploadKeyPackages,
    UploadLastResort,
    challenge_transcript,
    decode_response,
    encode_request,
)
from qpq_proto.errors import (
    AlreadyExistsError,
    BadVersionError,
    EpochConflictError,
    ForbiddenError,
    InvalidArgumentError,
    InvalidKeyPackageError,
    NotFoundError,
    PayloadTooLargeError,
    UnauthenticatedError,
    UnsupportedCiphersuiteError,
)
from qpq_server.testing import TEST_DB_KEY, RunningServer

# ---- session ----------------------------------------------------------------


async def test_health_needs_no_token(server: RunningServer) -> None:
    async with server.connect(token="") as client:
        status = await client.call(Health())
    assert status.status == "ok"
    assert status.storage == "ok"
    assert status.version == "0.1.0"


async def test_wrong_or_missing_token_is_unauthenticated(server: RunningServer) -> None:
    async with server.connect(token="wrong") as client:
        with pytest.raises(UnauthenticatedError):
            await client.call(Challenge())
    async with server.connect(token="") as client:
        with pytest.raises(UnauthenticatedError):
            await client.call(ResolveUser("nobody"))


async def test_identity_calls_need_a_proven_identity(server: RunningServer) -> None:
    async with server.connect() as client:
        for call in (
            Fetch(limit=1),
            CountKeyPackages(),
            DeleteAccount(),
            RegisterUser("x"),
            FetchKeyPackage(identity_key=bytes(32)),
            CreateGroup(group_info=b"x"),
            FetchGroupInfo(group_id=b"g"),
            Publish(b"g", 0, MessageKind.APPLICATION, b"x"),
        ):
            with pytest.raises(UnauthenticatedError):
                await client.call(call)


async def test_authenticate_needs_a_challenge_and_a_valid_signature(
    server: RunningServer, identity: qpq_core.Identity
) -> None:
    key = identity.public_key
    async with server.connect() as client:
        with pytest.raises(UnauthenticatedError):
            await client.call(Authenticate(identity_key=key, signature=bytes(64)))
        nonce = (await client.call(Challenge())).nonce
        with pytest.raises(UnauthenticatedError):
            await client.call(Authenticate(identity_key=key, signature=bytes(64)))
        # The nonce was single-use: a correct signature over it no longer counts.
        signature = identity.sign(challenge_transcript(nonce, key))
        with pytest.raises(UnauthenticatedError):
            await client.call(Authenticate(identity_key=key, signature=signature))
        nonce = (await client.call(Challenge())).nonce
        await client.call(
            Authenticate(
                identity_key=key, signature=identity.sign(challenge_transcript(nonce, key))
            )
        )
        # Proven, but without an account it may only register one.
        with pytest.raises(ForbiddenError, match="register first"):
            await client.call(Fetch(limit=1))
        await client.call(RegisterUser("proven-then-registered"))
        assert (await client.call(Fetch(limit=1))).messages == ()


async def test_a_proof_does_not_carry_over_to_another_connection(
    server: RunningServer, identity: qpq_core.Identity
) -> None:
    key = identity.public_key
    async with server.connect() as first:
        nonce = (await first.call(Challenge())).nonce
    signature = identity.sign(challenge_transcript(nonce, key))
    async with server.connect() as second:
        await second.call(Challenge())
        with pytest.raises(UnauthenticatedError):
            await second.call(Authenticate(identity_key=key, signature=signature))


async def test_bad_version_is_coded(server: RunningServer) -> None:
    async with server.connect() as client:
        answer = await client.raw(encode_request(Request(call=Health(), version=2)))
    response = decode_response(answer)
    assert isinstance(response, ErrorResponse)
    assert response.code is ErrorCode.BAD_VERSION
    assert response.to_exception().__class__ is BadVersionError


async def test_unknown_call_is_unsupported(server: RunningServer) -> None:
    data = bytearray(encode_request(Request(call=Health())))
    data[18:20] = struct.pack("<H", 99)  # the call union's discriminant
    async with server.connect() as client:
        response = decode_response(await client.raw(bytes(data)))
    assert isinstance(response, ErrorResponse)
    assert response.code is ErrorCode.UNSUPPORTED_CALL


# ---- users ------------------------------------------------------------------


async def test_usernames_register_resolve_and_conflict(server: RunningServer) -> None:
    alice, bob = qpq_core.Identity.generate(), qpq_core.Identity.generate()
    async with authed(server, alice, register=False) as client:
        await client.call(RegisterUser("Zoë_Alice"))
        await client.call(RegisterUser("Zoë_Alice"))  # idempotent
        assert (await client.call(ResolveUser("zoë_alice"))).identity_key == alice.public_key
        assert (await client.call(ResolveUser("ZOË_ALICE"))).identity_key == alice.public_key
        name = await client.call(ResolveIdentity(identity_key=alice.public_key))
        assert name.username == "Zoë_Alice"
    async with authed(server, bob, register=False) as client:
        with pytest.raises(AlreadyExistsError):
            await client.call(RegisterUser("zoË_alice"))
        with pytest.raises(NotFoundError):
            await client.call(ResolveUser("nobody-here"))
        with pytest.raises(NotFoundError):
            await client.call(ResolveIdentity(identity_key=bob.public_key))
        # Registering another name replaces the identity's old one.
        await client.call(RegisterUser("bob1"))
        await client.call(RegisterUser("bob2"))
        with pytest.raises(NotFoundError):
            await client.call(ResolveUser("bob1"))
        assert (await client.call(ResolveIdentity(identity_key=bob.public_key))).username == "bob2"


async def test_invalid_username_is_invalid_argument(server: RunningServer) -> None:
    async with server.connect() as client:
        with pytest.raises(InvalidArgumentError) as caught:
            await client.call(ResolveUser("x" * 65))
    assert caught.value.field == "username"


# ---- key packages -----------------------------------------------------------


async def test_key_package_upload_claim_count_and_last_resort(server: RunningServer) -> None:
    alice, bob = qpq_core.Identity.generate(), qpq_core.Identity.generate()
    packages = key_packages(alice, 2)
    (last_resort,) = key_packages(alice, 1, last_resort=True)
    async with authed(server, alice) as client:
        fingerprints = (await client.call(UploadKeyPackages(packages=packages))).fingerprints
        assert fingerprints == tuple(qpq_core.validate_key_package(p).fingerprint for p in packages)
        assert (await client.call(CountKeyPackages())).count == 2
        fingerprint = (await client.call(UploadLastResort(package=last_resort))).fingerprint
        assert fingerprint == qpq_core.validate_key_package(last_resort).fingerprint
        count = await client.call(CountKeyPackages())
        assert (count.count, count.has_last_resort) == (2, True)
    async with authed(server, bob) as client:
        claimed = [
            (await client.call(FetchKeyPackage(identity_key=alice.public_key))).package
            for _ in range(4)
        ]
    assert sorted(claimed[:2]) == sorted(packages)
    # None left: the last-resort package is served, and never consumed.
    assert claimed[2:] == [last_resort, last_resort]
    async with authed(server, alice) as client:
        count = await client.call(CountKeyPackages())
    assert (count.count, count.has_last_resort) == (0, True)


async def test_last_resort_upload_needs_the_last_resort_extension(
    server: RunningServer, identity: qpq_core.Identity
) -> None:
    (single_use,) = key_packages(identity, 1)
    async with authed(server, identity) as client:
        with pytest.raises(InvalidKeyPackageError):
            await client.call(UploadLastResort(package=single_use))
        assert not (await client.call(CountKeyPackages())).has_last_resort


async def test_fetch_key_package_of_unknown_identity_is_not_found(
    server: RunningServer, identity: qpq_core.Identity
) -> None:
    async with authed(server, identity) as client:
        with pytest.raises(NotFoundError):
            await client.call(FetchKeyPackage(identity_key=bytes(32)))


async def test_key_package_of_another_identity_is_forbidden(server: RunningServer) -> None:
    alice, mallory = qpq_core.Identity.generate(), qpq_core.Identity.generate()
    async with authed(server, mallory) as client:
        with pytest.raises(ForbiddenError):
            await client.call(UploadKeyPackages(packages=key_packages(alice, 1)))
        with pytest.raises(ForbiddenError):
            await client.call(UploadLastResort(package=key_packages(alice, 1)[0]))
        assert (await client.call(CountKeyPackages())).count == 0


async def test_invalid_key_packages_are_rejected_whole(
    server: RunningServer, identity: qpq_core.Identity
) -> None:
    (good,) = key_packages(identity, 1)
    tampered = good[:-1] + bytes([good[-1] ^ 1])
    async with authed(server, identity) as client:
        with pytest.raises(InvalidKeyPackageError):
            await client.call(UploadKeyPackages(packages=(good, b"garbage")))
        with pytest.raises(InvalidKeyPackageError):
            await client.call(UploadKeyPackages(packages=(tampered,)))
        other_suite = resigned_with_ciphersuite(identity, good, 0x0003)
        with pytest.raises(UnsupportedCiphersuiteError):
            await client.call(UploadKeyPackages(packages=(other_suite,)))
        assert (await client.call(CountKeyPackages())).count == 0


async def test_oversize_key_package_is_payload_too_large(
    server: RunningServer, identity: qpq_core.Identity
) -> None:
    async with authed(server, identity) as client:
        with pytest.raises(PayloadTooLargeError):
            await client.call(UploadLastResort(package=bytes(1024 * 1024 + 1)))


# ---- delivery ---------------------------------------------------------------


async def test_enqueue_is_retired(server: RunningServer, identity: qpq_core.Identity) -> None:
    # A Fetch request whose call discriminant is patched to enqueue's (the
    # union's 11th member, ordinal @12); its parameters are a struct as enqueue's are.
    data = bytearray(encode_request(Request(call=Fetch(limit=1), token=server.token)))
    data[18:20] = struct.pack("<H", 10)
    async with authed(server, identity) as client:
        response = decode_response(await client.raw(bytes(data)))
    assert isinstance(response, ErrorResponse)
    assert response.code is ErrorCode.UNSUPPORTED_CALL
    assert "retired" in response.message


async def test_publish_fetch_ack_with_increasing_seq(server: RunningServer) -> None:
    alice, bob = members(2)
    group_id = await build_group(server, alice, bob)
    async with authed(server, alice.identity) as client:
        payloads = [await send(client, alice, group_id, b"m%d" % i) for i in range(3)]
    async with authed(server, bob.identity) as client:
        messages = (await client.call(Fetch(limit=10))).messages
        assert [m.payload for m in messages] == payloads
        assert {m.sender for m in messages} == {alice.key}
        seqs = [m.seq for m in messages]
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == 3
        assert plaintexts(process(bob, messages)) == [b"m0", b"m1", b"m2"]
        assert (await client.call(Fetch(limit=2))).messages == messages[:2]
        acked = await client.call(Ack(up_to_seq=messages[1].seq))
        assert acked == Acked(removed=2, up_to_seq=messages[1].seq)
        assert (await client.call(Fetch(limit=10))).messages == messages[2:]
        await client.call(Ack(up_to_seq=messages[2].seq))
    # A seq is never reused, even after everything was acknowledged.
    async with authed(server, alice.identity) as client:
        await send(client, alice, group_id, b"again")
    async with authed(server, bob.identity) as client:
        (again,) = (await client.call(Fetch(limit=10))).messages
    assert again.seq > messages[2].seq


async def test_oversize_payload_and_bad_arguments(server: RunningServer) -> None:
    alice, bob = members(2)
    group_id = await build_group(server, alice, bob)
    async with authed(server, alice.identity) as client:
        too_big = Publish(group_id, 1, MessageKind.APPLICATION, bytes(5 * 1024 * 1024 + 1))
        with pytest.raises(PayloadTooLargeError) as caught:
            await client.call(too_big)
        assert caught.value.field == "payload"
        with pytest.raises(InvalidArgumentError) as bad_group:
            await client.call(Publish(bytes(257), 1, MessageKind.APPLICATION, b"x"))
        assert bad_group.value.field == "group_id"
        # A 5 MiB payload (the limit) is accepted and comes back whole.
        overhead = len(alice.mls.encrypt(group_id, bytes(100_000)).message) - 100_000
        big = application(alice, group_id, os.urandom(5 * 1024 * 1024 - overhead))
        assert len(big.payload) == 5 * 1024 * 1024
        assert (await client.call(big)).recipients == 1
    async with authed(server, bob.identity) as client:
        (message,) = (await client.call(Fetch(limit=10))).messages
        assert message.payload == big.payload
        await client.call(Ack(up_to_seq=message.seq))
        with pytest.raises(InvalidArgumentError):
            await client.call(Fetch(limit=100_000))
        with pytest.raises(InvalidArgumentError):
            await client.call(FetchWait(limit=1, timeout_ms=31_000))


async def test_a_full_queue_gets_one_gap_notice_and_the_publish_goes_on(
    server: RunningServer,
) -> None:
    alice, bob = members(2)
    group_id = await build_group(server, alice, bob)
    async with authed(server, alice.identity) as client:
        for i in range(20):  # QPQ_QUEUE_DEPTH of the shared server
            assert (await client.call(application(alice, group_id, b"%d" % i))).recipients == 1
        for _ in range(2):
            assert (await client.call(application(alice, group_id, b"lost"))).recipients == 0
    async with authed(server, bob.identity) as client:
        queued = await fetch_all(client)
    assert len(queued) == 21
    assert plaintexts(process(bob, queued[:20])) == [b"%d" % i for i in range(20)]
    gap = queued[20]
    assert (gap.is_gap, gap.gap_group_id, gap.sender, gap.payload) == (
        True,
        group_id,
        NO_SENDER,
        b"",
    )


async def test_publish_application_and_commit(server: RunningServer) -> None:
    alice, bob = members(2)
    group_id = await build_group(server, alice, bob)
    async with authed(server, alice.identity) as alice_client:
        message = application(alice, group_id, b"hello")
        published = await alice_client.call(message)
        assert (published.recipients, published.epoch) == (1, 1)
        async with authed(server, bob.identity) as bob_client:
            bundle = bob.mls.self_update(group_id)
            assert bundle.epoch == 1
            request = commit_call(bundle)
            published = await bob_client.call(request)
            assert (published.recipients, published.epoch) == (1, 2)
            bob.mls.merge_pending_commit(group_id)
            # The same commit again (its answer was lost) is answered as accepted,
            # and delivered once.
            again = await bob_client.call(request)
            assert (again.recipients, again.epoch) == (0, 2)
        # Another commit for the same epoch is a conflict that names the accepted one.
        losing = alice.mls.self_update(group_id)
        with pytest.raises(EpochConflictError) as conflict:
            await alice_client.call(commit_call(losing))
        assert conflict.value.accepted_commit == commit_hash(bundle)
        assert conflict.value.epoch == 2
        alice.mls.clear_pending_commit(group_id)
        received = process(alice, await drain(alice_client))
        assert [type(r) for r in received] == [qpq_core.CommitApplied]
        assert alice.exporter(group_id) == bob.exporter(group_id)
        # Declared facts must match the MLS framing.
        stale = application(alice, group_id, b"x")
        for wrong in (
            Publish(b"other", 2, MessageKind.APPLICATION, stale.payload),
            Publish(group_id, 1, MessageKind.APPLICATION, stale.payload),
            Publish(group_id, 2, MessageKind.COMMIT, stale.payload),
            Publish(group_id, 2, MessageKind.APPLICATION, b"junk"),
            Publish(group_id, 2, MessageKind.APPLICATION, alice.key_packages(1)[0]),
        ):
            with pytest.raises(InvalidArgumentError):
                await alice_client.call(wrong)
    async with authed(server, bob.identity) as bob_client:
        assert [m.payload for m in await drain(bob_client)] == [message.payload]


async def test_create_group_and_fetch_group_info(server: RunningServer) -> None:
    alice, bob = members(2)
    group_id = await build_group(server, alice, bob)
    async with authed(server, bob.identity) as client:
        served = await snapshot(client, group_id)
        with pytest.raises(NotFoundError):
            await snapshot(client, b"no such group")
    assert (served.group_id, served.epoch) == (group_id, 1)
    assert served.ratchet_tree
    # What it serves is what a member needs to rejoin.
    async with authed(server, bob.identity) as client:
        await rejoin(client, bob, group_id)
    async with authed(server, alice.identity) as client:
        (applied,) = await receive(client, alice)
    assert isinstance(applied, qpq_core.CommitApplied)
    assert (applied.external, applied.committer) == (True, bob.key)
    assert alice.exporter(group_id) == bob.exporter(group_id)


# ---- endpoints and accounts -------------------------------------------------


async def test_endpoints_publish_and_resolve_with_observed_address(
    server: RunningServer, identity: qpq_core.Identity
) -> None:
    endpoints = (Endpoint(host="192.0.2.7", port=7100), Endpoint(host="2001:db8::7", port=7101))
    async with authed(server, identity) as client:
        await client.call(PublishEndpoints(endpoints=endpoints))
        resolved = await client.call(ResolveEndpoints(identity_key=identity.public_key))
        local_port = client.protocol._transport.get_extra_info("sockname")[1]
    assert resolved.endpoints == endpoints
    assert resolved.observed == Endpoint(host="127.0.0.1", port=local_port)
    async with server.connect() as client:
        with pytest.raises(NotFoundError):
            await client.call(ResolveEndpoints(identity_key=bytes(32)))


async def test_only_ip_literals_are_published_a_few_at_a_time(
    server: RunningServer, identity: qpq_core.Identity
) -> None:
    published = (Endpoint(host="192.0.2.7", port=7100),)
    async with authed(server, identity) as client:
        await client.call(PublishEndpoints(endpoints=published))
        for refused, why in (
            ((Endpoint(host="peer.example", port=7101),), "not an IP address"),
            ((Endpoint(host="localhost", port=7101),), "not an IP address"),
            ((Endpoint(host="0.0.0.0", port=7101),), "no address a peer can dial"),  # noqa: S104
            ((Endpoint(host="ff02::1", port=7101),), "no address a peer can dial"),
            (tuple(Endpoint(f"192.0.2.{i}", 7100) for i in range(1, 6)), "at most 4"),
        ):
            with pytest.raises(InvalidArgumentError, match=why) as error:
                await client.call(PublishEndpoints(endpoints=refused))
            assert error.value.field == "endpoints"
        # Nothing refused replaced what was published.
        resolved = await client.call(ResolveEndpoints(identity_key=identity.public_key))
    assert resolved.endpoints == published


async def test_endpoints_are_told_only_to_members_of_a_shared_group(
    server: RunningServer,
) -> None:
    # Where a member listens is where their device is: only who shares a
    # group with them (the server's verified roster) learns it. Everyone
    # else gets the answer of an identity that published nothing.
    alice, bob, stranger, silent = members(4)
    group_id = await build_group(server, alice, bob)
    async with authed(server, silent.identity):
        pass  # registered, never published
    published = (Endpoint(host="192.0.2.7", port=7100),)
    async with authed(server, alice.identity) as client:
        await client.call(PublishEndpoints(endpoints=published))
    async with authed(server, bob.identity) as client:
        resolved = await client.call(ResolveEndpoints(identity_key=alice.key))
        assert resolved.endpoints == published
        assert resolved.observed is not None
    answers = []
    async with authed(server, stranger.identity) as client:
        for target in (alice.key, silent.key, bytes(32)):
            with pytest.raises(NotFoundError) as refused:
                await client.call(ResolveEndpoints(identity_key=target))
            answers.append((refused.value.code, refused.value.message, refused.value.field))
    async with server.connect() as client:  # the token, but no proven identity
        with pytest.raises(NotFoundError) as refused:
            await client.call(ResolveEndpoints(identity_key=alice.key))
        answers.append((refused.value.code, refused.value.message, refused.value.field))
    # One answer, whether the target published, exists, or is no member of ours.
    assert len(set(answers)) == 1
    # Removed from the group, Bob no longer learns where Alice is.
    async with authed(server, alice.identity) as client:
        bundle = alice.mls.remove_members(group_id, [bob.key])
        await publish_commit(client, alice, bundle)
    async with authed(server, bob.identity) as client:
        with pytest.raises(NotFoundError):
            await client.call(ResolveEndpoints(identity_key=alice.key))


async def test_delete_account_removes_everything(server: RunningServer) -> None:
    alice_member, friend = members(2)
    alice = alice_member.identity
    async with authed(server, alice) as client:
        await client.call(RegisterUser("deleteme"))
        await client.call(UploadKeyPackages(packages=alice_member.key_packages(2)))
    async with authed(server, friend.identity) as client:
        # The friend's invitation leaves a Welcome waiting in alice's queue.
        group_id = await create_group(client, friend)
        package = await claim(client, alice.public_key)
        await publish_commit(client, friend, friend.mls.add_members(group_id, [package]))
    async with authed(server, alice) as client:
        assert len(await fetch_all(client)) == 1
        await client.call(PublishEndpoints(endpoints=(Endpoint(host="198.51.100.1", port=1),)))
        await client.call(DeleteAccount())
        # The account is gone for good: the server closes its connections.
        async with asyncio.timeout(10):
            await client.wait_closed()
        assert client.closed_reason == "this account was deleted; it cannot be used again"
    async with authed(server, friend.identity) as client:
        for call in (
            ResolveUser("deleteme"),
            ResolveIdentity(identity_key=alice.public_key),
            FetchKeyPackage(identity_key=alice.public_key),
            ResolveEndpoints(identity_key=alice.public_key),
        ):
            with pytest.raises(NotFoundError):
                await client.call(call)
    async with authed(server, qpq_core.Identity.generate(), register=False) as client:
        # The name is held for its cooldown, then free again (test_usernames).
        with pytest.raises(AlreadyExistsError, match="reserved"):
            await client.call(RegisterUser("deleteme"))
    async with server.connect() as client:
        with pytest.raises(ForbiddenError, match="deleted"):
            await client.authenticate(alice)
    # Its queue, packages and endpoints went with it (the storage tests count rows).
    async with authed(server, friend.identity) as client:
        assert (
            await client.call(ResolveIdentities(identity_keys=(alice.public_key,)))
        ).statuses == (AccountStatus.DELETED,)


async def test_logs_carry_no_secrets(server: RunningServer) -> None:
    alice, bob = members(2)
    # The group id travels in every payload's cleartext: a canary for payloads.
    group_id = await build_group(server, alice, bob, group_id=b"log-canary-payload")
    async with authed(server, alice.identity) as client:
        payload = await send(client, alice, group_id, b"hello")
        await client.call(RegisterUser("log-canary-user"))
    log = server.log()
    assert "listening" in log
    for secret in (server.token, TEST_DB_KEY, alice.key.hex(), bob.key.hex(), payload.hex()):
        assert secret not in log
    assert "log-canary-payload" not in log
