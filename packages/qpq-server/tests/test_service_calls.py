"""Every call's happy path and the coded errors it can answer with, over real QUIC."""

from __future__ import annotations

import struct

import pytest
from server_helpers import authed, key_packages, resigned_with_ciphersuite

import qpq_core
from qpq_proto import (
    Ack,
    Acked,
    Authenticate,
    Challenge,
    CountKeyPackages,
    DeleteAccount,
    Endpoint,
    Enqueue,
    ErrorCode,
    ErrorResponse,
    Fetch,
    FetchKeyPackage,
    FetchWait,
    Health,
    MessageKind,
    Publish,
    PublishEndpoints,
    RegisterUser,
    Request,
    ResolveEndpoints,
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
    QueueFullError,
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
    async with authed(server, alice) as client:
        await client.call(RegisterUser("Zoë_Alice"))
        await client.call(RegisterUser("Zoë_Alice"))  # idempotent
        assert (await client.call(ResolveUser("zoë_alice"))).identity_key == alice.public_key
        assert (await client.call(ResolveUser("ZOË_ALICE"))).identity_key == alice.public_key
        name = await client.call(ResolveIdentity(identity_key=alice.public_key))
        assert name.username == "Zoë_Alice"
    async with authed(server, bob) as client:
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


async def test_enqueue_fetch_ack_with_increasing_seq(server: RunningServer) -> None:
    alice, bob = qpq_core.Identity.generate(), qpq_core.Identity.generate()
    async with authed(server, alice) as client:
        seqs = [
            (await client.call(Enqueue(recipient=bob.public_key, payload=b"m%d" % i))).seq
            for i in range(3)
        ]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 3
    async with authed(server, bob) as client:
        messages = (await client.call(Fetch(limit=10))).messages
        assert [m.payload for m in messages] == [b"m0", b"m1", b"m2"]
        assert {m.sender for m in messages} == {alice.public_key}
        assert (await client.call(Fetch(limit=2))).messages == messages[:2]
        assert await client.call(Ack(up_to_seq=messages[1].seq)) == Acked(removed=2)
        assert (await client.call(Fetch(limit=10))).messages == messages[2:]
        await client.call(Ack(up_to_seq=messages[2].seq))
        # A seq is never reused, even after everything was acknowledged.
        seq = (await client.call(Enqueue(recipient=bob.public_key, payload=b"again"))).seq
        assert seq > messages[2].seq


async def test_oversize_payload_and_bad_recipient(
    server: RunningServer, identity: qpq_core.Identity
) -> None:
    async with authed(server, identity) as client:
        with pytest.raises(PayloadTooLargeError):
            await client.call(Enqueue(recipient=bytes(32), payload=bytes(5 * 1024 * 1024 + 1)))
        # A 5 MiB payload (the limit) is accepted and comes back whole.
        big = bytes(range(256)) * (5 * 1024 * 1024 // 256)
        await client.call(Enqueue(recipient=identity.public_key, payload=big))
        (message,) = (await client.call(Fetch(limit=10))).messages
        assert message.payload == big
        await client.call(Ack(up_to_seq=message.seq))
        with pytest.raises(InvalidArgumentError):
            await client.call(Fetch(limit=100_000))
        with pytest.raises(InvalidArgumentError):
            await client.call(FetchWait(limit=1, timeout_ms=31_000))


async def test_queue_full(server: RunningServer, identity: qpq_core.Identity) -> None:
    target = qpq_core.Identity.generate().public_key
    async with authed(server, identity) as client:
        for _ in range(20):  # QPQ_QUEUE_DEPTH of the shared server
            await client.call(Enqueue(recipient=target, payload=b"x"))
        with pytest.raises(QueueFullError):
            await client.call(Enqueue(recipient=target, payload=b"x"))


def _group_of_two() -> tuple[qpq_core.MlsClient, qpq_core.MlsClient, bytes, bytes, bytes]:
    alice_id, bob_id = qpq_core.Identity.generate(), qpq_core.Identity.generate()
    alice, bob = qpq_core.MlsClient(alice_id), qpq_core.MlsClient(bob_id)
    group_id = alice.create_group().group_id
    bundle = alice.add_members(group_id, [bob.create_key_packages(1).packages[0]])
    alice.merge_pending_commit(group_id)
    assert bundle.welcome is not None
    bob.join_from_welcome(bundle.welcome)
    return alice, bob, group_id, alice_id.public_key, bob_id.public_key


async def test_publish_application_and_commit(server: RunningServer) -> None:
    alice, bob, group_id, alice_key, bob_key = _group_of_two()
    message = alice.encrypt(group_id, b"hello").message
    publisher = qpq_core.Identity.generate()
    async with authed(server, publisher) as client:
        published = await client.call(
            Publish(
                group_id=group_id,
                epoch=1,
                kind=MessageKind.APPLICATION,
                payload=message,
                recipients=(bob_key, alice_key),
            )
        )
        assert published.recipients == 2
        commit = bob.self_update(group_id)
        assert commit.epoch == 1
        request = Publish(
            group_id=group_id,
            epoch=1,
            kind=MessageKind.COMMIT,
            payload=commit.commit,
            recipients=(alice_key,),
        )
        assert (await client.call(request)).recipients == 1
        with pytest.raises(EpochConflictError):
            await client.call(request)
        # Declared facts must match the MLS framing.
        for wrong in (
            Publish(
                group_id=b"other",
                epoch=1,
                kind=MessageKind.APPLICATION,
                payload=message,
                recipients=(),
            ),
            Publish(
                group_id=group_id,
                epoch=2,
                kind=MessageKind.APPLICATION,
                payload=message,
                recipients=(),
            ),
            Publish(
                group_id=group_id, epoch=1, kind=MessageKind.COMMIT, payload=message, recipients=()
            ),
            Publish(
                group_id=group_id,
                epoch=1,
                kind=MessageKind.APPLICATION,
                payload=b"junk",
                recipients=(),
            ),
        ):
            with pytest.raises(InvalidArgumentError):
                await client.call(wrong)


async def test_publish_to_a_full_queue_changes_nothing(server: RunningServer) -> None:
    alice, _bob, group_id, alice_key, bob_key = _group_of_two()
    full = qpq_core.Identity.generate().public_key
    sender = qpq_core.Identity.generate()
    commit = alice.self_update(group_id)
    async with authed(server, sender) as client:
        for _ in range(20):
            await client.call(Enqueue(recipient=full, payload=b"x"))
        request = Publish(
            group_id=group_id,
            epoch=commit.epoch,
            kind=MessageKind.COMMIT,
            payload=commit.commit,
            recipients=(bob_key, full),
        )
        with pytest.raises(QueueFullError):
            await client.call(request)
    # Neither bob's queue nor the group's epoch moved: the same commit goes through now.
    async with authed(server, sender) as client:
        ok = Publish(
            group_id=group_id,
            epoch=commit.epoch,
            kind=MessageKind.COMMIT,
            payload=commit.commit,
            recipients=(bob_key, alice_key),
        )
        assert (await client.call(ok)).recipients == 2


# ---- endpoints and accounts -------------------------------------------------


async def test_endpoints_publish_and_resolve_with_observed_address(
    server: RunningServer, identity: qpq_core.Identity
) -> None:
    endpoints = (Endpoint(host="192.0.2.7", port=7100), Endpoint(host="peer.example", port=7101))
    async with authed(server, identity) as client:
        await client.call(PublishEndpoints(endpoints=endpoints))
        resolved = await client.call(ResolveEndpoints(identity_key=identity.public_key))
        local_port = client.protocol._transport.get_extra_info("sockname")[1]
    assert resolved.endpoints == endpoints
    assert resolved.observed == Endpoint(host="127.0.0.1", port=local_port)
    async with server.connect() as client:
        with pytest.raises(NotFoundError):
            await client.call(ResolveEndpoints(identity_key=bytes(32)))


async def test_delete_account_removes_everything(server: RunningServer) -> None:
    alice, friend = qpq_core.Identity.generate(), qpq_core.Identity.generate()
    async with authed(server, friend) as client:
        await client.call(Enqueue(recipient=alice.public_key, payload=b"waiting"))
    async with authed(server, alice) as client:
        await client.call(RegisterUser("deleteme"))
        await client.call(UploadKeyPackages(packages=key_packages(alice, 2)))
        await client.call(PublishEndpoints(endpoints=(Endpoint(host="198.51.100.1", port=1),)))
        await client.call(DeleteAccount())
        assert (await client.call(Fetch(limit=10))).messages == ()
        assert (await client.call(CountKeyPackages())).count == 0
        for call in (
            ResolveUser("deleteme"),
            ResolveIdentity(identity_key=alice.public_key),
            FetchKeyPackage(identity_key=alice.public_key),
            ResolveEndpoints(identity_key=alice.public_key),
        ):
            with pytest.raises(NotFoundError):
                await client.call(call)
        # The name is free again.
        await client.call(RegisterUser("deleteme"))


async def test_logs_carry_no_secrets(server: RunningServer, identity: qpq_core.Identity) -> None:
    async with authed(server, identity) as client:
        await client.call(Enqueue(recipient=identity.public_key, payload=b"log-canary-payload"))
        await client.call(RegisterUser("log-canary-user"))
    log = server.log()
    assert "listening" in log
    for secret in (server.token, TEST_DB_KEY, identity.public_key.hex()):
        assert secret not in log
    assert "log-canary-payload" not in log
