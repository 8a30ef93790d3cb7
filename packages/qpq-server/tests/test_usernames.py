"""Usernames: one name up to case and confusables (UTS #39), and a cooldown before reuse."""

from __future__ import annotations

from pathlib import Path

import pytest
from server_helpers import authed

import qpq_core
from qpq_proto import RegisterUser, ResolveIdentity, ResolveUser
from qpq_proto.errors import AlreadyExistsError, NotFoundError
from qpq_server._migrations import MIGRATIONS
from qpq_server._sqlcipher import SqlCipherStorage, _Database
from qpq_server._usernames import username_key
from qpq_server.testing import RunningServer, ServerProcess

KEY = "username-test-key"
A, B, C = (bytes([n]) * 32 for n in b"abc")
DAY_MS = 24 * 3600 * 1000
CYRILLIC_ALICE = "\u0430lice"  # the first letter is CYRILLIC SMALL LETTER A


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("alice", CYRILLIC_ALICE),
        ("alice", "ALICE"),
        ("Zoë_Alice", "zoË_alice"),
        ("bob1", "bobl"),
        ("paypal", "\u0440\u0430ypal"),  # Cyrillic er and a
        ("mallory", "rnallory"),
        ("alice", "\uff41lice"),  # fullwidth a
    ],
)
def test_confusable_names_have_one_key(one: str, other: str) -> None:
    assert username_key(one) == username_key(other)


@pytest.mark.parametrize(("one", "other"), [("alice", "alicia"), ("bob", "rob"), ("a1", "a2")])
def test_different_names_have_different_keys(one: str, other: str) -> None:
    assert username_key(one) != username_key(other)


async def register(store: SqlCipherStorage, who: bytes, name: str, now_ms: int) -> str:
    return await store.register_username(
        who, name, username_key(name), now_ms=now_ms, cooldown_ms=30 * DAY_MS
    )


async def test_a_name_given_up_is_held_for_its_owner_until_the_cooldown_ends(
    tmp_path: Path,
) -> None:
    store = await SqlCipherStorage.open(tmp_path / "qpq.db", KEY)
    try:
        await register(store, A, "alice", 1000)
        await register(store, A, "alice2", 2000)  # a rename gives "alice" up
        assert await store.resolve_username(username_key("alice")) is None
        for name in ("alice", "ALICE", CYRILLIC_ALICE):
            with pytest.raises(AlreadyExistsError, match="reserved"):
                await register(store, B, name, 2000 + 30 * DAY_MS - 1)
        # Its owner may take it back at any time; that gives "alice2" up in turn.
        assert await register(store, A, "Alice", 3000) == "Alice"
        assert await store.resolve_username(username_key("alice")) == A
        with pytest.raises(AlreadyExistsError):
            await register(store, B, "alice2", 4000)
        # A deleted account's name is held the same way, from the deletion.
        await store.delete_account(A, now_ms=5000)
        assert await store.resolve_identity(A) is None
        with pytest.raises(AlreadyExistsError, match="reserved"):
            await register(store, B, "alice", 5000 + 30 * DAY_MS - 1)
        # Once the cooldown is over the name is anyone's.
        assert await register(store, B, "alice", 5000 + 30 * DAY_MS) == "alice"
        assert await store.resolve_username(username_key("alice")) == B
        assert await register(store, C, "alice2", 2000 + 30 * DAY_MS) == "alice2"
    finally:
        await store.close()


async def test_schema_3_usernames_are_rekeyed_by_skeleton(tmp_path: Path) -> None:
    path = tmp_path / "qpq.db"
    old = _Database(path, KEY, MIGRATIONS[:3])
    try:
        with old.transaction() as cur:
            cur.executemany(
                "INSERT INTO usernames (identity_key, username, username_key) VALUES (?, ?, ?)",
                # Keys as schema 3 computed them: NFKC case folds, so these did not collide.
                [(A, "Alice", "alice"), (B, CYRILLIC_ALICE, CYRILLIC_ALICE), (C, "bob1", "bob1")],
            )
    finally:
        old.close()
    store = await SqlCipherStorage.open(path, KEY)
    try:
        assert await store.resolve_username(username_key("ALICE")) == A
        assert await store.resolve_username(username_key("bobl")) == C
        # The later, confusable registration lost its name; its owner picks another.
        assert await store.resolve_identity(B) is None
        assert await register(store, B, "alicia", 1000) == "alicia"
    finally:
        await store.close()


async def test_confusable_and_recycled_names_are_refused_by_a_real_server(
    server: RunningServer,
) -> None:
    alice, mallory = qpq_core.Identity.generate(), qpq_core.Identity.generate()
    async with authed(server, alice) as client:
        await client.call(RegisterUser("alice-u"))
    async with authed(server, mallory) as client:
        for name in ("\u0430lice-u", "ALICE-U", "a\u217c\u0456ce-u"):  # Cyrillic a, roman l, i
            with pytest.raises(AlreadyExistsError):
                await client.call(RegisterUser(name))
    async with authed(server, alice) as client:
        await client.call(RegisterUser("alice-v"))  # gives "alice-u" up
    async with authed(server, mallory) as client:
        with pytest.raises(NotFoundError):
            await client.call(ResolveUser("alice-u"))
        with pytest.raises(AlreadyExistsError, match="reserved"):
            await client.call(RegisterUser("alice-u"))
    async with authed(server, alice) as client:
        await client.call(RegisterUser("alice-u"))  # its owner takes it back
        assert (await client.call(ResolveUser("Alice-U"))).identity_key == alice.public_key


async def test_without_a_cooldown_a_released_name_is_free_at_once(tmp_path: Path) -> None:
    alice, bob = qpq_core.Identity.generate(), qpq_core.Identity.generate()
    with ServerProcess(tmp_path, extra_env={"QPQ_USERNAME_COOLDOWN_DAYS": "0"}) as server:
        async with authed(server, alice) as client:
            await client.call(RegisterUser("carol"))
            await client.call(RegisterUser("carol-old"))
        async with authed(server, bob) as client:
            await client.call(RegisterUser("carol"))
            name = await client.call(ResolveIdentity(identity_key=bob.public_key))
            assert name.username == "carol"
