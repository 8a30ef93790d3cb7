"""Devices of an account against a real server: registration by certificate,
listing, revocation, and the link mailbox.

A linked device authenticates with its own key, acts for the account its
certificate names, and is its own leaf in each group; a removed device gets
nothing more, cannot authenticate, and cannot be added back; a link code is
read only by a device of the account it was made for, once, before it expires.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
from conftest import OpenStore
from groups import (
    Member,
    application,
    build_group,
    claim,
    drain,
    publish_commit,
    receive,
    rejoin,
    snapshot,
    upload_key_package,
)
from server_helpers import authed
from storage_checks import commit, delivery, make_group

import qpq_core
from qpq_proto import (
    FetchLink,
    ListDevices,
    PostLink,
    RegisterDevice,
    RegisterUser,
    RevokeDevice,
    UploadKeyPackages,
)
from qpq_proto.errors import (
    ForbiddenError,
    InvalidArgumentError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
)
from qpq_server._accounts import Registration
from qpq_server._ops_devices import NO_REQUEST, OTHER_ACCOUNT, LinkRequest
from qpq_server.testing import RunningServer, ServerProcess, harness_username

_GENEROUS = {
    "QPQ_RATE_PER_SECOND": "100000",
    "QPQ_RATE_BURST": "100000",
    "QPQ_KEY_PACKAGE_CLAIM_BURST": "100000",
    "QPQ_KEY_PACKAGE_CLAIMS_PER_CLAIMER_PER_DAY": "100000",
}
_WITHIN_SECONDS = 10.0


def linked(account: Member, name: str) -> Member:
    """A new device of ``account``'s owner, its leaves carrying the certificate."""
    device = qpq_core.Identity.generate()
    certificate = account.identity.issue_device_certificate(device.public_key, name, 1_700_000_000)
    identity = device.with_certificate(certificate)
    return Member(identity, qpq_core.MlsClient(identity))


async def register(server: RunningServer, device: Member) -> None:
    async with server.connect() as client:
        await client.authenticate(device.identity, register=False)
        certificate = device.identity.certificate
        assert certificate is not None
        await client.call(RegisterDevice(certificate=certificate))


async def test_a_linked_device_is_its_accounts_leaf_and_sends(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, extra_env=_GENEROUS) as server:
        alice, bob = Member.generate(), Member.generate()
        async with authed(server, alice.identity):
            pass
        phone = linked(alice, "phone")
        await register(server, phone)
        async with server.connect() as client:
            await client.authenticate(phone.identity, register=False)
            await upload_key_package(client, phone)
            listed = await client.call(ListDevices(account_key=alice.key))
            assert listed.device_keys == (alice.key, phone.key)
            assert listed.certificates == (b"", phone.identity.certificate)
            # The device renames its account: the name is the account key's.
            await client.call(RegisterUser(username="alice-devices"))
        async with authed(server, bob.identity) as b:
            assert (await b.call(ListDevices(account_key=alice.key))).device_keys[1] == phone.key
        group = await build_group(server, bob, alice, phone)
        assert set(bob.mls.members(group)) == {alice.key, bob.key, phone.key}
        accounts = dict(zip(bob.mls.members(group), bob.mls.member_accounts(group), strict=True))
        assert accounts[phone.key] == alice.key
        async with (
            authed(server, bob.identity) as b,
            authed(server, phone.identity, register=False) as p,
        ):
            published = await p.call(application(phone, group, b"from alice's phone"))
            assert published.recipients == 2
            (result,) = await receive(b, bob)
            assert isinstance(result, qpq_core.ApplicationMessage)
            assert result.sender == phone.key
            assert result.plaintext == b"from alice's phone"


async def test_a_device_registers_only_with_a_certificate_that_chains(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, extra_env=_GENEROUS) as server:
        alice = Member.generate()
        async with authed(server, alice.identity):
            pass
        device = qpq_core.Identity.generate()
        stranger = qpq_core.Identity.generate()
        for_another = alice.identity.issue_device_certificate(stranger.public_key, "x", 1)
        no_account = stranger.issue_device_certificate(device.public_key, "x", 1)
        forged = bytearray(alice.identity.issue_device_certificate(device.public_key, "x", 1))
        forged[-1] ^= 1
        async with server.connect() as client:
            await client.authenticate(device, register=False)
            with pytest.raises(ForbiddenError, match="another device key"):
                await client.call(RegisterDevice(certificate=for_another))
            with pytest.raises(ForbiddenError, match="no active account"):
                await client.call(RegisterDevice(certificate=no_account))
            with pytest.raises(InvalidArgumentError, match="does not verify"):
                await client.call(RegisterDevice(certificate=bytes(forged)))
            # Not registered: it acts for no account.
            with pytest.raises(ForbiddenError, match="no account"):
                await client.call(ListDevices(account_key=alice.key))
        # A device's KeyPackages must name the account it registered for.
        phone = linked(alice, "phone")
        await register(server, phone)
        other = Member.generate()
        elsewhere = other.identity.issue_device_certificate(phone.key, "phone", 1)
        wrong = qpq_core.MlsClient(phone.identity.with_certificate(elsewhere))
        async with server.connect() as client:
            await client.authenticate(phone.identity, register=False)
            with pytest.raises(ForbiddenError, match="another account"):
                await client.call(UploadKeyPackages(packages=wrong.create_key_packages(1).packages))


async def test_a_removed_device_gets_nothing_and_cannot_come_back(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, extra_env=_GENEROUS) as server:
        alice, bob = Member.generate(), Member.generate()
        async with authed(server, alice.identity):
            pass
        phone = linked(alice, "phone")
        await register(server, phone)
        group = await build_group(server, bob, alice, phone)
        # A KeyPackage bob claimed before the removal: adding it later is refused.
        laptop = linked(alice, "laptop")
        await register(server, laptop)
        async with authed(server, laptop.identity, register=False) as own:
            await upload_key_package(own, laptop)
        async with authed(server, bob.identity) as b:
            laptop_package = await claim(b, laptop.key)

        async with (
            authed(server, phone.identity, register=False) as live,
            authed(server, alice.identity) as a,
        ):
            with pytest.raises(InvalidArgumentError, match="cannot remove itself"):
                await a.call(RevokeDevice(device_key=alice.key))
            await a.call(RevokeDevice(device_key=phone.key))
            await a.call(RevokeDevice(device_key=laptop.key))
            with pytest.raises(NotFoundError):
                await a.call(RevokeDevice(device_key=phone.key))
            listed = await a.call(ListDevices(account_key=alice.key))
            assert listed.device_keys == (alice.key,)
            async with asyncio.timeout(_WITHIN_SECONDS):
                await live.wait_closed()
            assert live.closed_reason is not None
            assert "removed from its account" in live.closed_reason
        async with server.connect() as client:
            with pytest.raises(ForbiddenError, match="removed from its account"):
                await client.authenticate(phone.identity, register=False)

        async with authed(server, bob.identity) as b:
            # Fanned out to alice only: the phone's leaf stays until a commit removes it.
            published = await b.call(application(bob, group, b"after the removal"))
            assert published.recipients == 1
            with pytest.raises(ForbiddenError, match="removed from its account"):
                await publish_commit(b, bob, bob.mls.add_members(group, [laptop_package]))
            bundle = bob.mls.remove_members(group, [phone.key])
            assert (await publish_commit(b, bob, bundle)).recipients == 1
        async with authed(server, alice.identity) as a:
            (message, _commit) = await drain(a)
            assert alice.mls.process(message.payload).plaintext == b"after the removal"


def _mailbox(code: str) -> bytes:
    return hashlib.sha256(code.encode()).digest()


async def test_a_link_code_is_read_by_its_account_once(server: RunningServer) -> None:
    alice, mallory = Member.generate(), Member.generate()
    new_device = qpq_core.Identity.generate()
    box = _mailbox("test code " + new_device.public_key.hex())
    async with (
        authed(server, alice.identity) as a,
        authed(server, mallory.identity) as m,
        server.connect() as new,
    ):
        await new.authenticate(new_device, register=False)
        alice_name = harness_username(alice.key)
        with pytest.raises(NotFoundError):
            await new.call(PostLink(mailbox=box, username="nobody-here", payload=b"request"))
        with pytest.raises(PayloadTooLargeError):
            await new.call(PostLink(mailbox=box, username=alice_name, payload=bytes(1025)))
        await new.call(PostLink(mailbox=box, username=alice_name, payload=b"request"))
        # Another account cannot read or answer it.
        with pytest.raises(ForbiddenError, match="another account"):
            await m.call(FetchLink(mailbox=box))
        with pytest.raises(ForbiddenError, match="another account"):
            await m.call(PostLink(mailbox=box, username="", payload=b"evil"))
        # Nothing for the new device before an approval.
        assert (await new.call(FetchLink(mailbox=box))).payload == b""
        found = await a.call(FetchLink(mailbox=box))
        assert (found.payload, found.device_key) == (b"request", new_device.public_key)
        await a.call(PostLink(mailbox=box, username="", payload=b"answer"))
        # Single use: answered, it cannot be read or answered again.
        with pytest.raises(NotFoundError):
            await a.call(FetchLink(mailbox=box))
        with pytest.raises(NotFoundError):
            await a.call(PostLink(mailbox=box, username="", payload=b"again"))
        assert (await new.call(FetchLink(mailbox=box))).payload == b"answer"
        with pytest.raises(NotFoundError):
            await new.call(FetchLink(mailbox=box))
        # A code nobody made.
        with pytest.raises(NotFoundError):
            await a.call(FetchLink(mailbox=_mailbox("never made")))


async def test_a_link_request_expires_and_counts_tries(open_store: OpenStore) -> None:
    store = await open_store()
    try:
        account = qpq_core.Identity.generate().public_key
        device = qpq_core.Identity.generate().public_key
        await store.register_account(
            Registration(
                identity_key=account,
                username="linker",
                invite_hash=None,
                invite_required=False,
                now_ms=0,
                cooldown_ms=0,
            )
        )
        box = _mailbox("expiring")
        await store.post_link_request(
            box, username="linker", device_key=device, request=b"r", now_ms=0, expires_at_ms=600
        )
        found = await store.read_link_request(box, account, now_ms=599, tries_per_hour=2)
        assert found == LinkRequest(device_key=device, request=b"r")
        assert await store.read_link_request(box, account, now_ms=600, tries_per_hour=2) == (
            NO_REQUEST
        )
        with pytest.raises(NotFoundError):
            await store.answer_link(box, account, account, b"late", now_ms=600)
        with pytest.raises(NotFoundError):
            await store.take_link_answer(box, device, now_ms=600)
        other = qpq_core.Identity.generate().public_key
        await store.post_link_request(
            box, username="linker", device_key=device, request=b"r", now_ms=700, expires_at_ms=900
        )
        assert await store.read_link_request(box, other, now_ms=701, tries_per_hour=2) == (
            OTHER_ACCOUNT
        )
        # The account had two tries this hour, and took them.
        with pytest.raises(RateLimitedError):
            await store.read_link_request(box, account, now_ms=702, tries_per_hour=2)
    finally:
        await store.close()


async def test_a_device_of_a_member_account_joins_by_external_commit(tmp_path: Path) -> None:
    """A restored backup is a new device of its account: it joins each group by
    itself; a device of an account not in the group cannot even read it."""
    with ServerProcess(tmp_path, extra_env=_GENEROUS) as server:
        alice, bob, dave = Member.generate(), Member.generate(), Member.generate()
        async with authed(server, dave.identity):
            pass
        group = await build_group(server, bob, alice)
        restored = linked(alice, "restored")
        await register(server, restored)
        async with authed(server, restored.identity, register=False) as r:
            published = await rejoin(r, restored, group)
            assert published.recipients == 2
        async with authed(server, bob.identity) as b:
            (applied,) = await receive(b, bob)
            assert isinstance(applied, qpq_core.CommitApplied)
            assert applied.external
            assert applied.committer == restored.key
            assert applied.added == (restored.key,)
            published = await b.call(application(bob, group, b"to both of alice's devices"))
            assert published.recipients == 2
        async with authed(server, restored.identity, register=False) as r:
            (message,) = await receive(r, restored)
            assert isinstance(message, qpq_core.ApplicationMessage)
            assert message.plaintext == b"to both of alice's devices"

        # Dave's registered device: his account has no leaf in the group.
        laptop = linked(dave, "laptop")
        await register(server, laptop)
        async with authed(server, laptop.identity, register=False) as d:
            with pytest.raises(ForbiddenError, match="only a member"):
                await snapshot(d, group)


async def test_a_revoked_device_cannot_join_by_external_commit(open_store: OpenStore) -> None:
    """Revoked between its authentication and its commit (another node's
    revocation): the commit that would store its leaf is refused."""
    store = await open_store()
    try:
        account = qpq_core.Identity.generate()
        device = qpq_core.Identity.generate()
        await store.register_account(
            Registration(
                identity_key=account.public_key,
                username="reviver",
                invite_hash=None,
                invite_required=False,
                now_ms=0,
                cooldown_ms=0,
            )
        )
        await store.register_device(
            device.public_key,
            account.public_key,
            name="lost",
            certificate=account.issue_device_certificate(device.public_key, "lost", 1),
            issued_at_ms=1,
        )
        group = b"g" * 16
        await make_group(store, group, (account.public_key,))
        await store.revoke_device(account.public_key, device.public_key, now_ms=2)
        joined = commit(0, b"external", (account.public_key, device.public_key))
        with pytest.raises(ForbiddenError, match="removed from its account"):
            await store.apply_group_update(
                group,
                joined,
                recipients=(account.public_key,),
                delivery=delivery(device.public_key, b"external"),
                external_joiners=(device.public_key,),
            )
        assert await store.group_version(group) == (0, 0)
        assert await store.group_members(group) == (account.public_key,)
    finally:
        await store.close()
