"""Usernames: one name up to case and confusables (UTS #39), each with its set of keys,
and a cooldown before reuse."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from look_alikes import race
from server_helpers import authed
from storage_checks import rows

import qpq_core
from qpq_client._rows import username_key as client_username_key
from qpq_proto import RegisterUser, ResolveIdentity, ResolveUser
from qpq_proto.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from qpq_server import _postgres
from qpq_server._engine import Txn
from qpq_server._errors import StorageError
from qpq_server._migrations import MIGRATIONS, POSTGRES_MIGRATIONS
from qpq_server._postgres import PostgresStorage
from qpq_server._sqlcipher import SqlCipherStorage, _Database
from qpq_server._usernames import _fold, _skeleton, username_key, username_keys
from qpq_server.testing import RunningServer, ServerProcess

KEY = "username-test-key"
A, B, C = (bytes([n]) * 32 for n in b"abc")
DAY_MS = 24 * 3600 * 1000
CYRILLIC_ALICE = "\u0430lice"  # the first letter is CYRILLIC SMALL LETTER A
GREEK_ABE = "\u0391\u0392\u0395"  # Greek capitals alpha, beta, epsilon: they look like ABE


def keys_of(*names: str) -> tuple[str, ...]:
    """The folded keys of plain names, to write a name's key set as names."""
    return tuple(username_key(name) for name in names)


@pytest.mark.parametrize(
    ("name", "like"),
    [
        ("alice", ("alice",)),
        ("ALICE", ("alice",)),  # a capital I among capitals reads as I
        ("aIice", ("aiice", "alice")),  # a capital I among small letters reads as l
        ("AIice", ("aiice", "alice")),  # and so it does after a capital and before small ones
        ("ALlCE", ("allce", "alice")),  # a small l among capitals reads as I
        ("allce", ("allce",)),
        ("mike", ("mike",)),
        ("mlke", ("mlke",)),
        ("mIke", ("mike", "mlke")),
        ("MIKE", ("mike",)),
        ("Ian", ("ian", "lan")),
        ("IAN", ("ian",)),
        ("b0b", ("bob",)),  # 0 looks like a capital O, which folds to o
        ("n0on", ("noon",)),
        ("rnallory", ("mallory",)),
        ("\uff43\uff41\uff52\uff4f\uff4c", ("carol",)),  # fullwidth
        ("b1ll", ("blll",)),  # 1 looks like l, not like a dotted i
        ("B1LL", ("blll", "bill")),  # among capitals it reads as I
        (GREEK_ABE, (GREEK_ABE.lower(), "abe")),
        ("\u13f4\u13ac\u13ac", ("bee",)),  # Cherokee capitals fold to themselves
        (
            "\u0394\u03b7\u03bc\u03ae\u03c4\u03c1\u03b7\u03c2",
            ("\u03b4\u03b7\u03bc\u03ae\u03c4\u03c1\u03b7\u03c2",),
        ),
    ],
)
def test_a_name_has_its_folded_key_and_the_key_of_its_look(
    name: str, like: tuple[str, ...]
) -> None:
    assert username_keys(name) == keys_of(*like)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("alice", CYRILLIC_ALICE),
        ("alice", "ALICE"),
        ("Zo\u00eb_Alice", "zo\u00cb_alice"),
        ("bob1", "bobl"),
        ("paypal", "\u0440\u0430ypal"),  # Cyrillic er and a
        ("mallory", "rnallory"),
        ("alice", "\uff41lice"),  # fullwidth a
        ("alice", "aIice"),  # a capital I looks like l but folds to i
        ("ALICE", "aIice"),
        ("alice", "AIice"),  # reads "Alice"
        ("alice", "ALlCE"),  # reads "ALICE"
        ("ALICE", "ALlCE"),
        ("mike", "mIke"),
        ("mlke", "mIke"),
        ("Ian", "lan"),
        ("BILL", "B1LL"),
        ("bob", "b0b"),  # the skeleton of 0 is a capital O
        ("bee", "\u13f4\u13ac\u13ac"),  # Cherokee capitals fold to themselves
        ("Bob", "\u13f4ob"),
        ("abe", GREEK_ABE),  # its fold looks like neither, its capitals like ABE
        ("alice", "\u0430\u04cf\u0456\u0441\u0435"),  # all Cyrillic, with a small palochka
        ("STRASSE", "stra\u00dfe"),
    ],
)
def test_look_alike_names_share_a_key(one: str, other: str) -> None:
    assert set(username_keys(one)) & set(username_keys(other))


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("alice", "alicia"),
        ("bob", "rob"),
        ("a1", "a2"),
        ("mike", "mlke"),  # a dotted i is not an l
        ("MIKE", "mlke"),
        ("alice", "allce"),
        ("ALICE", "allce"),
        ("IAN", "lan"),
        ("bill", "b1ll"),
    ],
)
def test_different_names_share_no_key(one: str, other: str) -> None:
    assert not set(username_keys(one)) & set(username_keys(other))


# ---- the client's comparison ------------------------------------------------


def server_merges_what_the_client_merges(name: str) -> bool:
    """Whether the server's folded key of ``name`` is that of the client's key of it.

    Names with one client key then have one folded key: the client (which
    compares pinned names by its key) never makes one of two names the
    server keeps apart.
    """
    return username_key(client_username_key(name)) == username_key(name)


def test_the_client_key_never_merges_code_points_the_server_tells_apart() -> None:
    wrong = [
        f"U+{ord(char):04X}"
        for char in map(chr, range(0x110000))
        if unicodedata.category(char) not in ("Cn", "Cs", "Co")
        and not server_merges_what_the_client_merges(char)
    ]
    assert wrong == []


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
def test_the_client_key_never_merges_names_the_server_tells_apart(name: str) -> None:
    assert server_merges_what_the_client_merges(unicodedata.normalize("NFC", name))


# ---- storage ----------------------------------------------------------------


async def register(store: Any, who: bytes, name: str, now_ms: int) -> str:
    result: str = await store.register_username(who, name, now_ms=now_ms, cooldown_ms=30 * DAY_MS)
    return result


async def test_a_name_given_up_is_held_for_its_owner_until_the_cooldown_ends(
    tmp_path: Path,
) -> None:
    store = await SqlCipherStorage.open(tmp_path / "qpq.db", KEY)
    try:
        await register(store, A, "alice", 1000)
        await register(store, A, "alice2", 2000)  # a rename gives "alice" up
        assert await store.resolve_username("alice") is None
        for name in ("alice", "ALICE", CYRILLIC_ALICE, "aIice"):
            with pytest.raises(AlreadyExistsError, match="reserved"):
                await register(store, B, name, 2000 + 30 * DAY_MS - 1)
        # Its owner may take it back at any time; that gives "alice2" up in turn.
        assert await register(store, A, "Alice", 3000) == "Alice"
        assert await store.resolve_username("alice") == A
        with pytest.raises(AlreadyExistsError):
            await register(store, B, "alice2", 4000)
        # A deleted account's name is held the same way, from the deletion.
        await store.delete_account(A, now_ms=5000)
        assert await store.resolve_identity(A) is None
        with pytest.raises(AlreadyExistsError, match="reserved"):
            await register(store, B, "alice", 5000 + 30 * DAY_MS - 1)
        # Once the cooldown is over the name is anyone's.
        assert await register(store, B, "alice", 5000 + 30 * DAY_MS) == "alice"
        assert await store.resolve_username("alice") == B
        # "alice2" was given up when "Alice" was taken back.
        assert await register(store, C, "alice2", 3000 + 30 * DAY_MS) == "alice2"
    finally:
        await store.close()


async def test_a_hold_holds_every_key_of_the_name(open_store: Callable[..., Any]) -> None:
    store = await open_store()
    try:
        await register(store, A, GREEK_ABE, 1000)  # keys: its fold's and abe's
        await register(store, A, "alpha", 2000)
        for name in (GREEK_ABE, "abe", "ABE"):
            with pytest.raises(AlreadyExistsError, match="reserved"):
                await register(store, B, name, 3000)
        await register(store, C, "aIice", 1000)  # keys: aiice's and alice's
        await store.delete_account(C, now_ms=2000)
        for name in ("aIice", "aiice", "alice"):
            with pytest.raises(AlreadyExistsError, match="reserved"):
                await register(store, B, name, 3000)
        # Taking a name back keeps the keys both names share.
        await register(store, C, "alice", 4000)
        assert await store.resolve_username("alice") == C
        with pytest.raises(AlreadyExistsError, match="reserved"):
            await register(store, B, "aiice", 5000)
        # Every hold ends with its cooldown (the periodic cleanup removes them).
        await register(store, B, "aiice", 2000 + 30 * DAY_MS)
        assert await store.resolve_username("aiice") == B
        assert await store.resolve_username("aIice") == B  # its folded key wins
        assert await store.resolve_username("alice") == C
    finally:
        await store.close()


async def test_the_same_name_again_in_any_case_changes_nothing(tmp_path: Path) -> None:
    store = await SqlCipherStorage.open(tmp_path / "qpq.db", KEY)
    try:
        assert await register(store, A, "mike", 1000) == "mike"
        assert await register(store, A, "MIKE", 2000) == "mike"
        assert await register(store, B, "mlke", 2000) == "mlke"
        with pytest.raises(AlreadyExistsError, match="taken"):
            await register(store, A, "mIke", 3000)  # looks like B's name
        assert await store.resolve_identity(A) == "mike"
        keys = await rows(store, "SELECT key, identity_key, released_at_ms FROM username_keys")
        assert sorted((key, bytes(who), at) for key, who, at in keys) == sorted(
            [(username_key("mike"), A, None), (username_key("mlke"), B, None)]
        )
    finally:
        await store.close()


async def test_schema_3_usernames_are_keyed_by_skeleton(tmp_path: Path) -> None:
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
        assert await store.resolve_username("ALICE") == A
        assert await store.resolve_username("bobl") == C
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
        for name in ("alice-u", "aIice-u", "ALlCE-U"):
            with pytest.raises(AlreadyExistsError, match="reserved"):
                await client.call(RegisterUser(name))
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

D, E, F, G, H, J, X, Y = (bytes([n]) * 32 for n in b"defghjxy")
#: Names as schema 7 stored them, in the order they were registered, all with
#: different keys then (the skeleton of the case fold).
SCHEMA_7_NAMES = [
    (A, "alice"),
    (B, "aIice"),  # looks like "alice"; its folded key is its own
    (C, "Ian"),  # looks like "lan", registered later: "lan" keeps its folded key
    (D, "lan"),
    (E, "b0b"),
    (F, "bob"),  # the same folded key as "b0b", registered later: it loses it
    (G, GREEK_ABE),
    (H, "abe"),
    (J, "mike"),
]
#: Held names (key as stored, holder, released at).
SCHEMA_7_HOLDS = [
    ("aiice", X, 1000),  # now B's folded key: B keeps it
    ("allce", Y, 2000),
    ("bOb", X, 500),  # b0b's key then; now "bob", E's
    ("nOon", X, 3000),  # "n0on"'s key then; now one key with the next, the later hold keeps it
    ("noon", Y, 4000),
]


def old_key(name: str) -> str:
    """The key as schemas 4 to 7 stored it: the skeleton of the NFKC case fold."""
    return _skeleton(_fold(name))


def store_schema_7_rows(txn: Txn) -> None:
    txn.executemany(
        "INSERT INTO usernames (identity_key, username, username_key) VALUES (?, ?, ?)",
        [(who, name, old_key(name)) for who, name in SCHEMA_7_NAMES],
    )
    txn.executemany(
        "INSERT INTO username_holds (username_key, identity_key, released_at_ms) VALUES (?, ?, ?)",
        SCHEMA_7_HOLDS,
    )


async def open_with_schema_7_rows(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """A store of schema 7 holding the rows above, then opened (migrated) by this server."""
    if backend == "sqlcipher":
        path = tmp_path / "qpq.db"
        old = _Database(path, KEY, MIGRATIONS[:7])
        try:
            with old.transaction() as txn:
                store_schema_7_rows(txn)
        finally:
            old.close()
        return await SqlCipherStorage.open(path, KEY)
    url = request.getfixturevalue("pg_url")
    with monkeypatch.context() as patch:
        patch.setattr(_postgres, "POSTGRES_MIGRATIONS", POSTGRES_MIGRATIONS[:7])
        old_store = await PostgresStorage.open(url)
    try:
        await old_store._write(store_schema_7_rows)
    finally:
        await old_store.close()
    return await PostgresStorage.open(url)


async def columns(store: Any, table: str) -> list[str]:
    if isinstance(store, SqlCipherStorage):
        found = [row[1] for row in await rows(store, f"PRAGMA table_info({table})")]
    else:
        found = [
            row[0]
            for row in await rows(
                store,
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = ?",
                table,
            )
        ]
    return sorted(str(name) for name in found)


@pytest.mark.parametrize("backend", ["sqlcipher", "postgresql"])
async def test_migration_8_keys_names_and_holds_and_look_alikes_keep_their_rows(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await open_with_schema_7_rows(backend, tmp_path, request, monkeypatch)
    try:
        keys = await rows(store, "SELECT key, identity_key, released_at_ms FROM username_keys")
        assert sorted((key, bytes(who), at) for key, who, at in keys) == sorted(
            [
                (username_key("alice"), A, None),
                (username_key("aiice"), B, None),
                (username_key("ian"), C, None),
                (username_key("lan"), D, None),
                (username_key("bob"), E, None),
                (username_key(GREEK_ABE), G, None),
                (username_key("abe"), H, None),
                (username_key("mike"), J, None),
                (username_key("allce"), Y, 2000),
                (username_key("noon"), Y, 4000),
            ]
        )
        # Each spelling resolves to its own identity, by its folded key...
        for who, name in SCHEMA_7_NAMES:
            if who != F:
                assert await store.resolve_username(name) == who, name
        assert await store.resolve_username("ALICE") == A
        assert await store.resolve_username("mlke") is None
        # ...but for the later of two names one up to case: it keeps its row
        # and spelling, not the key.
        assert await store.resolve_username("bob") == E
        assert await store.resolve_identity(F) == "bob"
        for who, name in ((X, "bob"), (F, "bob"), (X, "aIice"), (X, "Ian")):
            with pytest.raises(AlreadyExistsError, match="taken"):
                await register(store, who, name, 10_000)
        with pytest.raises(AlreadyExistsError, match="reserved"):
            await register(store, X, "allce", 10_000)
        assert await register(store, F, "bobby", 10_000) == "bobby"
        # The spelling is all that is left of a name's row; holds live with the keys.
        assert await columns(store, "usernames") == ["identity_key", "username"]
        assert await columns(store, "username_holds") == []
    finally:
        await store.close()


async def test_a_failed_key_step_leaves_schema_7_untouched(tmp_path: Path) -> None:
    path = tmp_path / "qpq.db"
    old = _Database(path, KEY, MIGRATIONS[:7])
    try:
        with old.transaction() as txn:
            store_schema_7_rows(txn)
    finally:
        old.close()
    version, description, statements = MIGRATIONS[7]

    def broken(txn: Txn) -> None:
        txn.execute("SELECT no_such_column FROM usernames")

    with pytest.raises(StorageError, match="cannot prepare database"):
        _Database(path, KEY, (*MIGRATIONS[:7], (version, description, (*statements, broken))))
    store = await SqlCipherStorage.open(path, KEY)  # the real upgrade still works
    try:
        assert await store.resolve_username("aIice") == B
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
    ("bob-x", "B0B-x", AlreadyExistsError),  # 0 for O
    ("bob-w", "\u13f4ob-w", InvalidArgumentError),  # Cherokee inside Latin
    ("alice-w", "aIice-w", AlreadyExistsError),  # capital I for l
    ("aIan-w", "alan-w", AlreadyExistsError),  # the other way round
    ("BILL-w", "B1LL-w", AlreadyExistsError),  # 1 for I among capitals
    ("l33t-w", "133t-w", AlreadyExistsError),  # 1 for l
    ("alice-x", "AIice-x", AlreadyExistsError),  # reads "Alice"
    ("alice-y", "ALlCE-y", AlreadyExistsError),  # a small l for I among capitals
    ("ALICE-z", "ALlCE-z", AlreadyExistsError),
    ("mike-w", "mIke-w", AlreadyExistsError),  # mIke looks like mlke and is mike
    ("mlke-x", "mIke-x", AlreadyExistsError),
    ("lan-w", "Ian-w", AlreadyExistsError),
    ("Ian-x", "lan-x", AlreadyExistsError),
    ("abe-3", "\u0391\u0392\u0395-3", AlreadyExistsError),  # Greek capitals beside small abe
    ("alice-8", "\u0430\u04cf\u0456\u0441\u0435-8", AlreadyExistsError),  # Cyrillic, palochka
    ("\u0391\u0392\u0395-4", "ABE-4", AlreadyExistsError),  # the other way round
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
    "abc\u6f22\u5b57",  # abc漢字
    "mike",
    "mlke",  # a dotted i is not an l: another name
    "alice",
    "allce",
    "IAN",  # reads IAN, not lan
    "lan",
    "bill",
    "b1ll",  # looks like blll
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


async def test_a_look_up_takes_the_name_it_is_before_the_name_it_looks_like(
    server: RunningServer,
) -> None:
    aiice, alice = qpq_core.Identity.generate(), qpq_core.Identity.generate()
    for who, name in ((aiice, "aiice-r"), (alice, "alice-r")):
        async with authed(server, who) as client:
            await client.call(RegisterUser(name))
    async with authed(server, qpq_core.Identity.generate()) as client:
        # "aIice-r" is "aiice-r" up to case and looks like "alice-r": case wins.
        found = await client.call(ResolveUser("aIice-r"))
        assert found.identity_key == aiice.public_key
        found = await client.call(ResolveUser("ALlCE-R"))  # allce-r, which nobody has, or ALICE-R
        assert found.identity_key == alice.public_key
        with pytest.raises(AlreadyExistsError, match="taken"):
            await client.call(RegisterUser("aIice-r"))


async def test_look_alikes_registered_at_once_are_stored_once(server: RunningServer) -> None:
    await race((server, server), rounds=4)
