"""Accounts against a real server: what a stranger with the token, or without it, can do.

Registration by invitation (no code, a used, expired or revoked code), the
production default and its explicit ``open``; per-account limits that a
second account on the same address does not share; suspension that closes
live connections within seconds; deletion that leaves the groups and stops
their fan-out; the operator's commands on the running server's database.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from groups import (
    Member,
    application,
    build_group,
    commit_call,
    create_group,
    drain,
    members,
    publish_commit,
    upload_key_package,
)
from server_helpers import authed

import qpq_core
from qpq_proto import (
    NO_SENDER,
    AccountStatus,
    Authenticate,
    Challenge,
    CountKeyPackages,
    DeleteAccount,
    Endpoint,
    FetchKeyPackage,
    Health,
    PublishEndpoints,
    RegisterUser,
    ResolveEndpoints,
    ResolveIdentities,
    ResolveIdentity,
    ResolveUser,
    UploadKeyPackages,
    challenge_transcript,
)
from qpq_proto.errors import (
    AlreadyExistsError,
    ForbiddenError,
    NotFoundError,
    RateLimitedError,
    UnauthenticatedError,
)
from qpq_server._accounts import invite_hash
from qpq_server._sqlcipher import SqlCipherStorage
from qpq_server.testing import (
    TEST_DB_KEY,
    CallClient,
    RunningServer,
    ServerProcess,
    harness_username,
    start_server,
)

#: No rate limit in the way of what a test means to reach.
_GENEROUS = {
    "QPQ_RATE_PER_SECOND": "100000",
    "QPQ_RATE_BURST": "100000",
    "QPQ_KEY_PACKAGE_CLAIM_BURST": "100000",
    "QPQ_KEY_PACKAGE_CLAIMS_PER_CLAIMER_PER_DAY": "100000",
}
#: How long a suspension or deletion may take to reach a live connection.
_WITHIN_SECONDS = 10.0


def operator(
    server: RunningServer, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """``qpq-server ARGS`` on the server host, with the server's own settings."""
    return subprocess.run(
        [sys.executable, "-m", "qpq_server", *args],
        env=server.env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def operate(
    server: RunningServer, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """:func:`operator` off the event loop: the test's live connections are
    served meanwhile, as a person's would be while the operator types."""
    return await asyncio.to_thread(operator, server, *args, stdin=stdin)


def new_invite(server: RunningServer, *args: str) -> str:
    made = operator(server, "invites", "create", *args)
    assert made.returncode == 0, made.stderr
    (code,) = made.stdout.split()
    return code


async def register(
    client: CallClient, identity: qpq_core.Identity, name: str, invite: str = ""
) -> None:
    """Prove ``identity`` on ``client`` and register ``name`` (with ``invite``)."""
    await client.authenticate(identity, register=False)
    await client.call(RegisterUser(username=name, invite=invite))


@pytest.fixture
def invite_server(tmp_path: Path) -> Iterator[RunningServer]:
    """A development server that registers people by invitation."""
    with ServerProcess(tmp_path, extra_env={**_GENEROUS, "QPQ_REGISTRATION": "invite"}) as running:
        yield running


# ---- registration -----------------------------------------------------------------


async def test_registration_needs_a_valid_unused_code(invite_server: RunningServer) -> None:
    server = invite_server
    stranger = qpq_core.Identity.generate()
    async with server.connect() as client:
        await client.authenticate(stranger, register=False)
        with pytest.raises(ForbiddenError, match="by invitation") as refused:
            await client.call(RegisterUser(username="stranger"))
        assert refused.value.field == "invite"
        # Without an account a proven identity can do nothing but register.
        packages = qpq_core.MlsClient(stranger).create_key_packages(1).packages
        with pytest.raises(ForbiddenError, match="register first"):
            await client.call(UploadKeyPackages(packages=tuple(packages)))
        with pytest.raises(ForbiddenError, match="register first"):
            await client.call(CountKeyPackages())
        with pytest.raises(ForbiddenError, match="not valid"):
            await client.call(RegisterUser(username="stranger", invite="qpqi-AAAA-BBBB-CCCC"))

    code = new_invite(server, "--note", "for alice")
    alice, mallory = qpq_core.Identity.generate(), qpq_core.Identity.generate()
    async with server.connect() as client:
        await register(client, alice, "alice", code)
        await client.call(CountKeyPackages())  # an account now
    async with server.connect() as client:
        await client.authenticate(mallory, register=False)
        with pytest.raises(ForbiddenError, match="already used"):
            await client.call(RegisterUser(username="mallory", invite=code))
        with pytest.raises(ForbiddenError, match="register first"):
            await client.call(CountKeyPackages())

    # A code the operator revoked, given as itself or by its id.
    revoked = new_invite(server)
    assert operator(server, "invites", "revoke", revoked).returncode == 0
    async with server.connect() as client:
        await client.authenticate(mallory, register=False)
        with pytest.raises(ForbiddenError, match="revoked"):
            await client.call(RegisterUser(username="mallory", invite=revoked))

    # A code past its expiry (written as the operator's command would, with
    # a lifetime that has run out).
    store = await SqlCipherStorage.open(server.data_dir / "qpq.db", TEST_DB_KEY)
    expired = "qpqi-EXPI-REDC-ODE2-3456"
    try:
        await store.create_invite(
            invite_hash(expired), max_uses=5, expires_at_ms=1000, note="", now_ms=0
        )
    finally:
        await store.close()
    async with server.connect() as client:
        await client.authenticate(mallory, register=False)
        with pytest.raises(ForbiddenError, match="expired"):
            await client.call(RegisterUser(username="mallory", invite=expired))

    listed = operator(server, "invites", "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == 3
    assert "used up" in lines[0]
    assert "used 1/1" in lines[0]
    assert "for alice" in lines[0]
    assert "revoked" in lines[1]
    assert "expired" in lines[2]
    # The codes themselves are never shown again, nor logged.
    for secret in (code, revoked):
        assert secret not in listed.stdout + listed.stderr
        assert secret not in server.log()


async def test_a_refused_registration_costs_no_use_of_the_code(
    invite_server: RunningServer,
) -> None:
    server = invite_server
    code = new_invite(server, "--uses", "2")
    first, second, third = (qpq_core.Identity.generate() for _ in range(3))
    async with server.connect() as client:
        await register(client, first, "alice", code)
    async with server.connect() as client:
        await client.authenticate(second, register=False)
        with pytest.raises(AlreadyExistsError):
            await client.call(RegisterUser(username="aIice", invite=code))  # looks like alice
        await client.call(RegisterUser(username="bob", invite=code))
    async with server.connect() as client:
        await client.authenticate(third, register=False)
        with pytest.raises(ForbiddenError, match="used up"):
            await client.call(RegisterUser(username="carol", invite=code))
    # A rename needs no code (and uses none).
    async with server.connect() as client:
        await client.authenticate(second, register=False)
        await client.call(RegisterUser(username="robert"))
        assert (await client.call(ResolveUser(username="robert"))).identity_key == second.public_key


def test_production_registers_by_invitation_unless_open_is_set(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(
        [sys.executable, "-m", "qpq_server", "gen-cert", "--cert", str(cert), "--key", str(key)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    production = {"QPQ_PRODUCTION": "1", "QPQ_TLS_CERT": str(cert), "QPQ_TLS_KEY": str(key)}

    async def register_without_code(server: RunningServer, token: str) -> None:
        async with server.connect(token=token) as client:
            await client.authenticate(qpq_core.Identity.generate(), register=False)
            await client.call(RegisterUser(username="newcomer"))

    # No token at all: a production server that admits by invitation needs none.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    invited = start_server(tmp_path / "a", token="", extra_env=production)
    try:
        assert "registration is by invitation" in invited.log()
        with pytest.raises(ForbiddenError, match="by invitation"):
            asyncio.run(register_without_code(invited, ""))
    finally:
        assert invited.stop() == 0
    opened = start_server(tmp_path / "b", extra_env={**production, "QPQ_REGISTRATION": "open"})
    try:
        assert "registration is OPEN" in opened.log()
        asyncio.run(register_without_code(opened, opened.token))
    finally:
        assert opened.stop() == 0


async def test_open_registration_is_limited_per_address(tmp_path: Path) -> None:
    env = {**_GENEROUS, "QPQ_REGISTRATIONS_PER_ADDRESS_PER_HOUR": "3"}
    with ServerProcess(tmp_path, extra_env=env) as server:
        for n in range(3):
            async with server.connect() as client:
                await register(client, qpq_core.Identity.generate(), f"user{n}")
        async with server.connect() as client:
            await client.authenticate(qpq_core.Identity.generate(), register=False)
            with pytest.raises(RateLimitedError, match="this address") as refused:
                await client.call(RegisterUser(username="user3"))
            assert refused.value.field == "username"
            # An operator's code admits past the address's limit.
            await client.call(RegisterUser(username="user3", invite=new_invite(server)))


async def test_without_a_token_lookups_need_an_account(tmp_path: Path) -> None:
    # A server without an access token: nobody who has not registered learns
    # who is registered, what their keys are, or where they can be reached.
    with ServerProcess(tmp_path, token="", extra_env=_GENEROUS) as server:
        alice = qpq_core.Identity.generate()
        async with server.connect() as client:
            await register(client, alice, "alice")
            await client.call(PublishEndpoints(endpoints=(Endpoint("192.0.2.7", 7100),)))
        lookups = (
            ResolveUser(username="alice"),
            ResolveIdentity(identity_key=alice.public_key),
            ResolveIdentities(identity_keys=(alice.public_key,)),
            ResolveEndpoints(identity_key=alice.public_key),
        )
        async with server.connect() as client:
            for call in lookups:
                with pytest.raises(UnauthenticatedError, match="accounts only"):
                    await client.call(call)
            await client.authenticate(qpq_core.Identity.generate(), register=False)
            for call in lookups:
                with pytest.raises(ForbiddenError, match="register first"):
                    await client.call(call)
            await client.call(RegisterUser(username="bob"))
            assert (await client.call(lookups[0])).identity_key == alice.public_key
            # Endpoints only for who shares a group with alice (test_service_calls).
            with pytest.raises(NotFoundError):
                await client.call(lookups[3])


async def test_an_account_renames_itself_a_few_times_a_day(tmp_path: Path) -> None:
    # Each rename holds the name given up for the cooldown: unbounded, one
    # account could keep thousands of names from everyone else.
    with ServerProcess(
        tmp_path, extra_env={**_GENEROUS, "QPQ_ACCOUNT_RENAMES_PER_DAY": "2"}
    ) as server:
        async with server.connect() as client:
            await register(client, qpq_core.Identity.generate(), "first")
            await client.call(RegisterUser(username="second"))
            await client.call(RegisterUser(username="third"))
            await client.call(RegisterUser(username="third"))  # the same name: no rename
            with pytest.raises(RateLimitedError, match="another name 2 times a day") as refused:
                await client.call(RegisterUser(username="fourth"))
            assert refused.value.field == "username"
            assert (await client.call(ResolveUser(username="third"))).identity_key


# ---- per-account limits -------------------------------------------------------------


async def test_an_account_at_its_limits_leaves_another_on_the_same_address_free(
    tmp_path: Path,
) -> None:
    env = {
        **_GENEROUS,
        "QPQ_ACCOUNT_MESSAGES_PER_HOUR": "4",
        "QPQ_QUOTA_GROUPS_CREATED": "2",
        "QPQ_INVITATIONS_TO_STRANGERS_PER_DAY": "1",
        "QPQ_KEY_PACKAGE_CLAIMS_PER_ACCOUNT_PER_DAY": "2",
    }
    with ServerProcess(tmp_path, extra_env=env) as server:
        alice, bob, carol, dave, erin = members(5)
        # alice creates a group with bob (a stranger: one invitation of her day).
        group = await build_group(server, alice, bob)
        async with authed(server, alice.identity) as client:
            # Her account's messages of the hour: the add was one, three more...
            for n in range(3):
                await client.call(application(alice, group, b"m%d" % n))
            with pytest.raises(RateLimitedError, match="in an hour") as refused:
                await client.call(application(alice, group, b"one too many"))
            assert refused.value.field == "account"
            # ...another group is hers to create, but not a third one.
            await create_group(client, alice)
            with pytest.raises(Exception, match="created 2 groups"):
                await create_group(client, alice)
        # bob, on the same address, is at none of her limits.
        async with authed(server, bob.identity) as client:
            await client.call(application(bob, group, b"bob is not limited by alice"))
            await create_group(client, bob)

        # Invitations to people who share no group with the inviter: bob may add one.
        for person in (carol, dave, erin):
            async with authed(server, person.identity) as own:
                await upload_key_package(own, person)
        async with authed(server, bob.identity) as client:
            second = await create_group(client, bob)
            carol_kp = (await client.call(FetchKeyPackage(identity_key=carol.key))).package
            dave_kp = (await client.call(FetchKeyPackage(identity_key=dave.key))).package
            bundle = bob.mls.add_members(second, [carol_kp, dave_kp])
            with pytest.raises(RateLimitedError, match="share no group") as refused:
                await client.call(commit_call(bundle))
            assert refused.value.field == "welcome"
            bob.mls.clear_pending_commit(second)
            # Nothing was stored: the group is as it was, and one stranger fits.
            await publish_commit(client, bob, bob.mls.add_members(second, [carol_kp]))
            # KeyPackage claims of his account: two made, the third refused.
            with pytest.raises(RateLimitedError, match="your account claimed"):
                await client.call(FetchKeyPackage(identity_key=erin.key))
        # alice (who shares a group with bob) may still claim erin's package.
        async with authed(server, alice.identity) as client:
            await client.call(FetchKeyPackage(identity_key=erin.key))


# ---- suspension -------------------------------------------------------------------


async def test_suspension_closes_live_connections_and_refuses_calls(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, extra_env=_GENEROUS) as server:
        alice, bob = members(2)
        group = await build_group(server, alice, bob)
        async with (
            authed(server, bob.identity) as watcher,
            authed(server, alice.identity) as client,
        ):
            name = harness_username(alice.key)
            async with client.subscribe() as pushed:
                waiting = asyncio.ensure_future(anext(pushed))
                done = await operate(
                    server, "accounts", "suspend", name, "--reason", "spam reports"
                )
                assert done.returncode == 0, done.stderr
                assert "suspended" in done.stdout
                async with asyncio.timeout(_WITHIN_SECONDS):
                    await client.wait_closed()
                assert client.closed_reason == "this account is suspended: spam reports"
                with pytest.raises(Exception):  # noqa: B017, PT011 - the stream ended with it
                    await waiting
            # Members see it as suspended; nobody claims its packages meanwhile.
            answer = await watcher.call(ResolveIdentities(identity_keys=(alice.key, bob.key)))
            assert answer.statuses == (AccountStatus.SUSPENDED, AccountStatus.ACTIVE)
            with pytest.raises(ForbiddenError, match="suspended"):
                await watcher.call(FetchKeyPackage(identity_key=alice.key))
            # Publishing to the group goes on for the others; its queue keeps it.
            await watcher.call(application(bob, group, b"while alice is away"))
        # A new connection is refused when it authenticates, with the reason.
        async with server.connect() as client:
            with pytest.raises(ForbiddenError, match="suspended: spam reports"):
                await client.authenticate(alice.identity)
        assert (await operate(server, "accounts", "unsuspend", name)).returncode == 0
        async with authed(server, alice.identity) as client:
            (message,) = await drain(client)
            assert alice.mls.process(message.payload).plaintext == b"while alice is away"


# ---- deletion ---------------------------------------------------------------------


async def test_deletion_leaves_the_groups_and_their_fan_out(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, extra_env=_GENEROUS) as server:
        alice, bob, carol = members(3)
        group = await build_group(server, alice, bob, carol)
        bob_name = harness_username(bob.key)
        async with authed(server, bob.identity) as client:
            await client.call(DeleteAccount())
            async with asyncio.timeout(_WITHIN_SECONDS):
                await client.wait_closed()
        # The identity never authenticates again; its name is held for it.
        async with server.connect() as client:
            with pytest.raises(ForbiddenError, match="deleted"):
                await client.authenticate(bob.identity)
            with pytest.raises(NotFoundError):
                await client.call(ResolveUser(username=bob_name))
            answer = await client.call(ResolveIdentities(identity_keys=(bob.key,)))
            assert answer == answer.__class__(("",), (AccountStatus.DELETED,))
        async with server.connect() as client:
            await client.authenticate(qpq_core.Identity.generate(), register=False)
            with pytest.raises(AlreadyExistsError, match="reserved"):
                await client.call(RegisterUser(username=bob_name))

        async with authed(server, alice.identity) as a, authed(server, carol.identity) as c:
            # Each other member was told, naming the group and the account.
            for client in (a, c):
                (notice,) = await drain(client)
                assert notice.is_deletion
                assert notice.account_deleted == bob.key
                assert notice.group_id == group
                assert notice.sender == NO_SENDER
            # Nothing is fanned out to the deleted account any more...
            published = await a.call(application(alice, group, b"after bob"))
            assert published.recipients == 1
            # ...and the first member's commit removes its leaves, as any removal.
            bundle = alice.mls.remove_members(group, [bob.key])
            assert (await publish_commit(a, alice, bundle)).recipients == 1
            for result in [carol.mls.process(e.payload) for e in await drain(c)]:
                if isinstance(result, qpq_core.CommitApplied):
                    assert result.removed == (bob.key,)
            assert set(carol.mls.members(group)) == {alice.key, carol.key}


async def test_the_operator_deletes_an_account_after_typing_its_name(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, extra_env=_GENEROUS) as server:
        alice, bob = members(2)
        group = await build_group(server, alice, bob)
        name = harness_username(bob.key)
        async with authed(server, alice.identity) as watcher:
            listed = await operate(server, "accounts", "list")
            assert listed.returncode == 0
            assert any(line.startswith(f"{name}  active") for line in listed.stdout.splitlines())
            shown = await operate(server, "accounts", "show", name)
            assert "member of 1" in shown.stdout
            assert bob.key.hex() in shown.stdout
            refused = await operate(server, "accounts", "delete", name, stdin="not-the-name\n")
            assert refused.returncode == 1
            assert refused.stderr.strip().endswith(f"not deleted: the name typed was not {name!r}")
            async with authed(server, bob.identity) as client:
                done = await operate(server, "accounts", "delete", name, stdin=f"{name}\n")
                assert done.returncode == 0, done.stderr
                async with asyncio.timeout(_WITHIN_SECONDS):
                    await client.wait_closed()
                assert client.closed_reason == "this account was deleted; it cannot be used again"
            # The member's waiting read is woken by the notice the command stored.
            async with asyncio.timeout(_WITHIN_SECONDS):
                while not (notices := await drain(watcher)):
                    await watcher.call(Health())
            assert [n.account_deleted for n in notices] == [bob.key]
            assert (await watcher.call(application(alice, group, b"x"))).recipients == 0
        missing = await operate(server, "accounts", "show", "nobody")
        assert missing.returncode == 1
        assert missing.stderr.splitlines() == [
            "qpq-server: error: no account is named 'nobody' (qpq-server accounts list)"
        ]


async def test_a_deleted_identity_cannot_come_back_by_authenticating_again(
    tmp_path: Path,
) -> None:
    with ServerProcess(tmp_path, extra_env=_GENEROUS) as server:
        bob = Member.generate()
        async with authed(server, bob.identity) as client:
            await client.call(DeleteAccount())
        async with server.connect() as client:
            nonce = await client.call(Challenge())
            signature = bob.identity.sign(challenge_transcript(nonce.nonce, bob.key))
            with pytest.raises(ForbiddenError, match="deleted"):
                await client.call(Authenticate(identity_key=bob.key, signature=signature))
            # Not proven: nothing of an identity call goes through.
            with pytest.raises(Exception, match="proven identity"):
                await client.call(RegisterUser(username="bob-again"))
            with pytest.raises(NotFoundError):
                await client.call(ResolveIdentity(identity_key=bob.key))


async def test_metrics_count_registrations_invites_and_suspensions(tmp_path: Path) -> None:
    env = {**_GENEROUS, "QPQ_REGISTRATION": "invite", "QPQ_METRICS_LISTEN": "127.0.0.1:0"}
    with ServerProcess(tmp_path, extra_env=env) as server:
        code = new_invite(server)
        alice = qpq_core.Identity.generate()
        async with server.connect() as client:
            await register(client, alice, "alice", code)
            text = await asyncio.to_thread(_scrape, server)
            assert 'qpq_registrations_total{registration="invite"} 1.0' in text
            assert 'qpq_invites_used_total{registration="invite"} 1.0' in text
            assert (await operate(server, "accounts", "suspend", "alice")).returncode == 0
            # The node refreshes the account totals as it closes the connection.
            async with asyncio.timeout(_WITHIN_SECONDS):
                await client.wait_closed()
        text = await asyncio.to_thread(_scrape, server)
        assert 'qpq_accounts{status="suspended"} 1.0' in text
        assert 'qpq_account_closed_connections_total{status="suspended"} 1.0' in text
        assert "alice" not in text


def _scrape(server: RunningServer) -> str:
    import urllib.request

    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode("utf-8"))
