"""Usernames: one name up to case and confusables (UTS #39), and a cooldown before reuse."""

from __future__ import annotations

import contextlib
import sqlite3
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from server_helpers import authed
from storage_checks import rows

import qpq_core
from qpq_proto import RegisterUser, ResolveIdentity, ResolveUser
from qpq_proto.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from qpq_server import _postgres
from qpq_server._migrations import (
    MIGRATIONS,
    POSTGRES_MIGRATIONS,
    USERNAME_REKEY_8,
    _rekey_steps,
)
from qpq_server._postgres import PostgresStorage
from qpq_server._sqlcipher import SqlCipherStorage, _Database
from qpq_server._usernames import _fold, _skeleton, username_key
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
        ("alice", "aIice"),  # a capital I looks like l but folds to i
        ("ALICE", "aIice"),
        ("mike", "mlke"),  # one through "mIke": i and l are one letter in keys
        ("bob", "b0b"),  # the skeleton of 0 is a capital O
        ("bee", "\u13f4\u13ac\u13ac"),  # Cherokee capitals fold to themselves
        ("Bob", "\u13f4ob"),
    ],
)
def test_confusable_names_have_one_key(one: str, other: str) -> None:
    assert username_key(one) == username_key(other)


@pytest.mark.parametrize(("one", "other"), [("alice", "alicia"), ("bob", "rob"), ("a1", "a2")])
def test_different_names_have_different_keys(one: str, other: str) -> None:
    assert username_key(one) != username_key(other)


def old_key(name: str) -> str:
    """The key as schema 4 to 6 stored it: the skeleton of the NFKC case fold."""
    return _skeleton(_fold(name))


def rekeyed(key: str) -> str:
    return "".join(USERNAME_REKEY_8.get(char, char) for char in key)


def test_migration_7_turns_every_code_point_s_old_key_into_its_key() -> None:
    # The table is data of the pinned ICU: another version must come with a migration.
    wrong = [
        f"U+{ord(char):04X}"
        for char in map(chr, range(0x110000))
        if unicodedata.category(char) not in ("Cn", "Cs", "Co")
        and rekeyed(old_key(char)) != username_key(char)
    ]
    assert wrong == []
    for old, new in USERNAME_REKEY_8.items():
        assert not set(new) & USERNAME_REKEY_8.keys(), old  # so the order does not matter


@settings(max_examples=300, deadline=None)
@given(
    st.text(
        st.characters(
            codec="utf-8",
            exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_migration_7_turns_an_old_key_into_the_key_in_python_and_in_sql(name: str) -> None:
    name = unicodedata.normalize("NFC", name)
    assert rekeyed(old_key(name)) == username_key(name)
    in_sql = old_key(name)
    with contextlib.closing(sqlite3.connect(":memory:")) as db:
        for step in _rekey_steps("?"):
            (in_sql,) = db.execute(f"SELECT {step}", (in_sql,)).fetchone()
    assert in_sql == username_key(name)


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
    async with authed(server, alice, register=False) as client:
        await client.call(RegisterUser("alice-u"))
    async with authed(server, mallory, register=False) as client:
        with pytest.raises(AlreadyExistsError):
            await client.call(RegisterUser("ALICE-U"))
        # Cyrillic a; roman l and Cyrillic i: scripts that pass for Latin, mixed into it.
        for name in ("\u0430lice-u", "a\u217c\u0456ce-u"):
            with pytest.raises(InvalidArgumentError, match="mixes scripts"):
                await client.call(RegisterUser(name))
    async with authed(server, alice, register=False) as client:
        await client.call(RegisterUser("alice-v"))  # gives "alice-u" up
    async with authed(server, mallory, register=False) as client:
        with pytest.raises(NotFoundError):
            await client.call(ResolveUser("alice-u"))
        with pytest.raises(AlreadyExistsError, match="reserved"):
            await client.call(RegisterUser("alice-u"))
    async with authed(server, alice, register=False) as client:
        await client.call(RegisterUser("alice-u"))  # its owner takes it back
        assert (await client.call(ResolveUser("Alice-U"))).identity_key == alice.public_key


async def test_without_a_cooldown_a_released_name_is_free_at_once(tmp_path: Path) -> None:
    alice, bob = qpq_core.Identity.generate(), qpq_core.Identity.generate()
    with ServerProcess(tmp_path, extra_env={"QPQ_USERNAME_COOLDOWN_DAYS": "0"}) as server:
        async with authed(server, alice, register=False) as client:
            await client.call(RegisterUser("carol"))
            await client.call(RegisterUser("carol-old"))
        async with authed(server, bob, register=False) as client:
            await client.call(RegisterUser("carol"))
            name = await client.call(ResolveIdentity(identity_key=bob.public_key))
            assert name.username == "carol"


# ---- migration 8 -------------------------------------------------------------

#: Names as schema 6 stored them, in the order they were registered.
SCHEMA_6_NAMES = [
    (b"A" * 32, "alice"),
    (b"B" * 32, "aIice"),  # registered later; one name with "alice" from schema 8 on
    (b"C" * 32, "b0b"),
    (b"D" * 32, "bob"),  # its key does not change, so it keeps it though registered later
    (b"E" * 32, "mike"),
]
#: Held names (key, holder, released at): the first two become one key.
SCHEMA_6_HOLDS = [("aiice", b"F" * 32, 1000), ("allce", b"G" * 32, 2000), ("bOb", b"F" * 32, 500)]


async def open_with_schema_6_rows(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """A store of schema 6 holding the rows above, then opened (migrated) by this server."""
    names = [(who, name, old_key(name)) for who, name in SCHEMA_6_NAMES]
    if backend == "sqlcipher":
        path = tmp_path / "qpq.db"
        old = _Database(path, KEY, MIGRATIONS[:6])
        try:
            with old.transaction() as cur:
                cur.executemany(
                    "INSERT INTO usernames (identity_key, username, username_key) VALUES (?, ?, ?)",
                    names,
                )
                cur.executemany(
                    "INSERT INTO username_holds (username_key, identity_key, released_at_ms) "
                    "VALUES (?, ?, ?)",
                    SCHEMA_6_HOLDS,
                )
        finally:
            old.close()
        return await SqlCipherStorage.open(path, KEY)
    url = request.getfixturevalue("pg_url")
    with monkeypatch.context() as patch:
        patch.setattr(_postgres, "POSTGRES_MIGRATIONS", POSTGRES_MIGRATIONS[:6])
        old_store = await PostgresStorage.open(url)
    try:
        async with old_store._pool.connection() as conn:
            for row in names:
                await conn.execute(
                    "INSERT INTO usernames (identity_key, username, username_key) "
                    "VALUES (%s, %s, %s)",
                    row,
                )
            for hold in SCHEMA_6_HOLDS:
                await conn.execute(
                    "INSERT INTO username_holds (username_key, identity_key, released_at_ms) "
                    "VALUES (%s, %s, %s)",
                    hold,
                )
    finally:
        await old_store.close()
    return await PostgresStorage.open(url)


@pytest.mark.parametrize("backend", ["sqlcipher", "postgresql"])
async def test_migration_7_rekeys_names_and_look_alikes_keep_their_rows(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await open_with_schema_6_rows(backend, tmp_path, request, monkeypatch)
    alice, look_alike, b0b, bob, mike = (who for who, _name in SCHEMA_6_NAMES)
    try:
        # The key goes to the name whose key did not change, else the earlier one.
        for name in ("alice", "aIice", "ALICE"):
            assert await store.resolve_username(username_key(name)) == alice
        for name in ("bob", "b0b"):
            assert await store.resolve_username(username_key(name)) == bob
        assert await store.resolve_username(username_key("mlke")) == mike
        # The look-alikes keep their rows and their spelling, not the key.
        assert await store.resolve_identity(look_alike) == "aIice"
        assert await store.resolve_identity(b0b) == "b0b"
        keys = [key for (key,) in await rows(store, "SELECT username_key FROM usernames")]
        assert len(set(keys)) == len(SCHEMA_6_NAMES)
        # Nobody takes a look-alike's name while either holds it, not even its holder.
        for who, name in ((b"X" * 32, "aIice"), (look_alike, "aIice"), (b"X" * 32, "b0b")):
            with pytest.raises(AlreadyExistsError, match="taken"):
                await register(store, who, name, 10_000)
        # A look-alike's holder may take another name.
        assert await register(store, look_alike, "alicia", 10_000) == "alicia"
        # Holds that now share a key: the most recent one is kept.
        holds = await rows(
            store, "SELECT username_key, identity_key FROM username_holds ORDER BY username_key"
        )
        held = {str(key): bytes(who) for key, who in holds}
        assert held.get("allce") == b"G" * 32
        assert held.get("bob") == b"F" * 32
        assert "aiice" not in held
        assert "bOb" not in held
    finally:
        await store.close()


# ---- what a real server refuses and accepts ---------------------------------

#: (registered first, then tried by someone else, the refusal): confusables
#: from Latin, Cyrillic, Greek and Cherokee, I/l/1, rn/m, fullwidth, mixed scripts.
LOOK_ALIKES = [
    ("paypal-w", "p\u0430yp\u0430l-w", InvalidArgumentError),  # Cyrillic a inside Latin
    ("axe-2", "\u0430\u0445\u0435-2", AlreadyExistsError),  # all Cyrillic (and digits)
    ("opo-2", "\u03bf\u03c1\u03bf-2", AlreadyExistsError),  # all Greek
    ("ABE-2", "\u0391\u0392\u0395-2", AlreadyExistsError),  # Greek capitals: ABE, not abe
    ("bee-2", "\u13f4\u13ac\u13ac-2", AlreadyExistsError),  # all Cherokee: BEE
    ("\u13f4\u13ac\u13ac-3", "bee-3", AlreadyExistsError),  # the other way round
    ("bob-w", "\u13f4ob-w", InvalidArgumentError),  # Cherokee inside Latin
    ("alice-w", "aIice-w", AlreadyExistsError),  # capital I for l
    ("aIan-w", "alan-w", AlreadyExistsError),  # the other way round
    ("bill-w", "b1ll-w", AlreadyExistsError),  # 1 for i
    ("l33t-w", "133t-w", AlreadyExistsError),  # 1 for l
    ("mallory-w", "rnallory-w", AlreadyExistsError),  # rn for m
    ("n0on-w", "noon-w", AlreadyExistsError),  # 0 for o
    ("carol-w", "\uff43\uff41\uff52\uff4f\uff4c-w", AlreadyExistsError),  # fullwidth
    (None, "bob\u043c\u0430\u0440\u0438\u044f-w", InvalidArgumentError),  # Latin and Cyrillic
    (None, "x\u0301\u0301-w", InvalidArgumentError),  # one mark twice on one letter
    (None, "x1\u0663-w", InvalidArgumentError),  # digits of two systems
]

#: Distinct names that must all be registrable beside one another.
DISTINCT = [
    "\u043c\u0430\u0440\u0438\u044f",  # мария
    "\u7530\u4e2d",  # 田中
    "\u03b4\u03b7\u03bc\u03ae\u03c4\u03c1\u03b7\u03c2",  # δημήτρης
    "\u0394\u03b7\u03bc\u03ae\u03c4\u03c1\u03b7\u03c2",  # Δημήτρης (another spelling: one name)
    "\u5c71\u7530\u305f\u308d\u3046",  # 山田たろう: Han with Hiragana
    "\uae40\ucca0\uc218",  # 김철수
    "\u0645\u062d\u0645\u062f",  # محمد
    "\u0414\u043c\u0438\u0442\u0440\u0438\u0439",  # Дмитрий
    "tanaka\u7530\u4e2d",  # Latin with Han
    "jos\u00e9",
    "Zo\u00eb",
    "rob",
    "mary",
    "marry",
    "anna",
    "hanna",
    "karl",
    "carl",
    "olga",
    "ivan",
]


@pytest.mark.parametrize(("first", "second", "refusal"), LOOK_ALIKES)
async def test_look_alike_names_are_refused_by_a_real_server(
    server: RunningServer, first: str | None, second: str, refusal: type[Exception]
) -> None:
    holder, other = qpq_core.Identity.generate(), qpq_core.Identity.generate()
    if first is not None:
        async with authed(server, holder, register=False) as client:
            await client.call(RegisterUser(first))
    async with authed(server, other, register=False) as client:
        with pytest.raises(refusal):
            await client.call(RegisterUser(second))
        with pytest.raises(NotFoundError):
            await client.call(ResolveIdentity(identity_key=other.public_key))


async def test_distinct_names_in_any_one_script_are_accepted_by_a_real_server(
    server: RunningServer,
) -> None:
    owners = {}
    for name in DISTINCT:
        if name == "\u0394\u03b7\u03bc\u03ae\u03c4\u03c1\u03b7\u03c2":
            continue  # checked below: the capitalized spelling of the name before it
        owners[name] = identity = qpq_core.Identity.generate()
        async with authed(server, identity, register=False) as client:
            await client.call(RegisterUser(name))
    async with authed(server, qpq_core.Identity.generate(), register=False) as client:
        for name, identity in owners.items():
            assert (await client.call(ResolveUser(name))).identity_key == identity.public_key
            spelled = await client.call(ResolveIdentity(identity_key=identity.public_key))
            assert spelled.username == name
        greek = "\u0394\u03b7\u03bc\u03ae\u03c4\u03c1\u03b7\u03c2"
        found = await client.call(ResolveUser(greek))
        assert found.identity_key == owners[greek.lower()].public_key
