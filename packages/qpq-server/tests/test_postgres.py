"""PostgreSQL specifics, in-process: the shared schema, and several stores (as several
nodes would open them) on one database racing each other.

Each ``PostgresStorage`` here has its own pool, as a separate node has; the
races are real concurrent transactions on a real server.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
from storage_checks import (
    NO_PROBLEMS,
    commit,
    delivery,
    execute,
    make_group,
    rows,
    store_problems,
)

from qpq_proto.errors import EpochConflictError, QuotaExceededError, UnavailableError
from qpq_server import StorageError
from qpq_server._checks import Severity, check_config
from qpq_server._config import ServerConfig, load_config
from qpq_server._database_url import nonlocal_hosts, redact_url, scrub
from qpq_server._errors import ConfigError
from qpq_server._migrations import MIGRATIONS, POSTGRES_MIGRATIONS
from qpq_server._notifier import DeliveryNotifier
from qpq_server._postgres import PostgresStorage
from qpq_server._sqlcipher import SqlCipherStorage
from qpq_server._storage import Delivered, Retention, StoredKeyPackage
from qpq_server.testing import PostgresCluster

A, B, C, D = (bytes([n]) * 32 for n in b"abcd")
G = b"g"


@pytest.fixture
async def nodes(pg_url: str) -> AsyncIterator[tuple[PostgresStorage, PostgresStorage]]:
    """Two stores on one database, each with its own pool, like two nodes."""
    first = await PostgresStorage.open(pg_url)
    second = await PostgresStorage.open(pg_url)
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


# ---- the schema -------------------------------------------------------------


async def test_both_backends_build_the_same_tables_and_columns(pg_url: str, tmp_path: Path) -> None:
    lite = await SqlCipherStorage.open(tmp_path / "qpq.db", "key")
    pg = await PostgresStorage.open(pg_url)
    try:
        lite_tables = {
            str(name): sorted(
                str(column[1]) for column in await rows(lite, f"PRAGMA table_info({name})")
            )
            for (name,) in await rows(
                lite,
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            )
        }
        pg_tables: dict[str, list[str]] = {}
        for table, column in await rows(
            pg,
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema()",
        ):
            pg_tables.setdefault(str(table), []).append(str(column))
        # Only nodes that share a database keep rate limits in it.
        shared_by_nodes = {"rate_limits": ["full_at", "identity_key"]}
        assert {t: sorted(c) for t, c in pg_tables.items()} == {**lite_tables, **shared_by_nodes}
        versions = [v for (v,) in await rows(pg, "SELECT version FROM schema_migrations")]
        assert sorted(versions) == [v for v, _d, _s in POSTGRES_MIGRATIONS]
        assert [v for v, _d, _s in MIGRATIONS] == [v for v, _d, _s in POSTGRES_MIGRATIONS]
    finally:
        await lite.close()
        await pg.close()


async def test_nodes_starting_together_migrate_once(pg_url: str) -> None:
    stores = await asyncio.gather(*(PostgresStorage.open(pg_url) for _ in range(4)))
    try:
        versions = [v for (v,) in await rows(stores[0], "SELECT version FROM schema_migrations")]
        assert sorted(versions) == [v for v, _d, _s in POSTGRES_MIGRATIONS]
    finally:
        for store in stores:
            await store.close()


async def test_a_newer_schema_is_refused(pg_url: str) -> None:
    store = await PostgresStorage.open(pg_url)
    try:
        await execute(
            store, "INSERT INTO schema_migrations (version, description) VALUES (999, 'future')"
        )
    finally:
        await store.close()
    with pytest.raises(StorageError, match="newer than this server"):
        await PostgresStorage.open(pg_url)


async def test_an_unreachable_database_names_no_password(pg_cluster: PostgresCluster) -> None:
    # Nothing listens on port 1; the password must not appear in the error.
    url = "postgresql://qpq:s3cret-pass@127.0.0.1:1/nothing"
    with pytest.raises(StorageError) as refused:
        await PostgresStorage.open(url)
    assert "s3cret-pass" not in str(refused.value)
    assert "postgresql://qpq:***@127.0.0.1:1/nothing" in str(refused.value)
    store = await PostgresStorage.open(pg_cluster.url())
    try:
        assert "***" not in repr(store)
        assert "qpq_tests" in repr(store)
    finally:
        await store.close()


async def test_a_database_that_may_lose_commits_is_named_in_the_log(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The test cluster runs without fsync (its durability is not under test).
    server_log = logging.getLogger("qpq_server")
    server_log.addHandler(caplog.handler)  # it may not propagate to the root
    try:
        with caplog.at_level(logging.WARNING, logger="qpq_server"):
            store = await PostgresStorage.open(pg_url)
            await store.close()
    finally:
        server_log.removeHandler(caplog.handler)
    warned = [r.getMessage() for r in caplog.records]
    assert any("fsync = off" in m for m in warned), warned
    assert any("synchronous_commit = off" in m for m in warned), warned


# ---- the configuration ---------------------------------------------------------


def test_database_url_is_a_secret_with_a_file_variant(tmp_path: Path) -> None:
    secret = tmp_path / "url"
    secret.write_text("postgresql://qpq:pw@db.example:5432/qpq?sslmode=verify-full\n")
    config = load_config(env={"QPQ_DATABASE_URL_FILE": str(secret)})
    assert config.database_url == "postgresql://qpq:pw@db.example:5432/qpq?sslmode=verify-full"
    assert "pw" not in repr(config)
    with pytest.raises(ConfigError) as refused:
        load_config(env={"QPQ_DATABASE_URL": "mysql://root:hunter2@db/qpq"})
    assert "hunter2" not in str(refused.value)
    assert load_config(env={}).database_url == ""


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("postgresql://qpq:pw@db.example/qpq", True),
        ("postgresql://qpq:pw@db.example/qpq?sslmode=require", True),
        ("postgresql://qpq:pw@db.example/qpq?sslmode=verify-ca", True),
        ("postgresql://qpq:pw@db.example/qpq?sslmode=verify-full&sslrootcert=/ca.pem", False),
        ("postgresql://qpq@127.0.0.1:5432/qpq", False),
        ("postgresql://qpq@[::1]/qpq", False),
        ("postgresql://qpq@localhost/qpq", False),
        ("postgresql:///qpq?host=/run/postgresql", False),
        ("postgresql://a.example,127.0.0.1/qpq?sslmode=prefer", True),
        ("postgresql:///qpq?host=10.0.0.5", True),
    ],
)
def test_production_refuses_a_remote_database_without_verified_tls(url: str, refused: bool) -> None:
    problems = [
        p
        for p in check_config(ServerConfig(production=True, database_url=url))
        if p.setting == "database_url"
    ]
    assert bool(problems) == refused
    assert all(p.severity is Severity.ERROR and "pw" not in p.message for p in problems)
    # The db_key rules are SQLCipher's: they do not apply to PostgreSQL.
    assert not any(
        p.setting == "db_key" for p in check_config(ServerConfig(production=True, database_url=url))
    )
    development = check_config(ServerConfig(database_url=url))
    assert all(p.severity is Severity.WARNING for p in development if p.setting == "database_url")


def test_urls_are_shown_without_their_password() -> None:
    assert redact_url("postgresql://u:p%40ss@h:5/d?sslmode=verify-full") == (
        "postgresql://u:***@h:5/d?sslmode=verify-full"
    )
    assert redact_url("postgresql://h/d?user=u&password=hunter2") == (
        "postgresql://h/d?user=u&password=***"
    )
    assert scrub("auth failed for p@ss", "postgresql://u:p%40ss@h/d") == "auth failed for ***"
    assert nonlocal_hosts("postgresql://[2001:db8::1]:5432,[::1]/d") == ["2001:db8::1"]


def test_every_way_libpq_may_reach_another_host_counts_as_remote() -> None:
    local: dict[str, str] = {}
    assert nonlocal_hosts("postgresql://localhost/d", local) == []
    assert nonlocal_hosts("postgresql:///d?host=/run/postgresql", local) == []
    # hostaddr wins over host in libpq: the name alone proves nothing.
    assert nonlocal_hosts("postgresql://localhost/d?hostaddr=192.0.2.7", local) == ["192.0.2.7"]
    # With no host in the URL, libpq takes the environment's.
    assert nonlocal_hosts("postgresql:///d", {"PGHOST": "db.example"}) == ["db.example"]
    assert nonlocal_hosts("postgresql:///d", {"PGHOSTADDR": "192.0.2.8"}) == ["192.0.2.8"]
    assert nonlocal_hosts("postgresql://127.0.0.1/d", {"PGHOST": "db.example"}) == []
    # A service entry is read by libpq, not by this check: it counts as remote.
    assert nonlocal_hosts("postgresql:///d?service=qpq", local) == ["service qpq"]


# ---- nodes racing -------------------------------------------------------------


async def test_concurrent_commits_on_two_nodes_one_wins_each_epoch(
    nodes: tuple[PostgresStorage, PostgresStorage],
) -> None:
    first, second = nodes
    await make_group(first, G, (A, B, C))
    for epoch in range(20):
        results = await asyncio.gather(
            first.apply_group_update(
                G,
                commit(epoch, b"a%d" % epoch, (A, B, C)),
                recipients=(B, C),
                delivery=delivery(A, b"a%d" % epoch, depth_cap=100),
            ),
            second.apply_group_update(
                G,
                commit(epoch, b"b%d" % epoch, (A, B, C)),
                recipients=(A, C),
                delivery=delivery(B, b"b%d" % epoch, depth_cap=100),
            ),
            return_exceptions=True,
        )
        won = [r for r in results if isinstance(r, Delivered)]
        lost = [r for r in results if isinstance(r, EpochConflictError)]
        assert (len(won), len(lost)) == (1, 1), results
        winner = b"a%d" % epoch if isinstance(results[0], Delivered) else b"b%d" % epoch
        assert lost[0].accepted_commit == hashlib.sha256(winner).digest()
        assert lost[0].epoch == epoch + 1
        assert await second.group_version(G) == (epoch + 1, 0)
    # C got exactly one commit per epoch, in epoch order.
    fetched = await first.fetch(C, after_seq=0, limit=100, max_bytes=1 << 20, now_ms=1)
    assert len(fetched) == 20
    assert [m.payload[1:] for m in fetched] == [b"%d" % e for e in range(20)]
    assert await store_problems(first) == NO_PROBLEMS


async def test_concurrent_claims_on_two_nodes_never_share_a_package(
    nodes: tuple[PostgresStorage, PostgresStorage],
) -> None:
    first, second = nodes
    packages = [StoredKeyPackage(b"kp%03d" % i, bytes([i]) * 32, 10**10) for i in range(40)]
    await first.add_key_packages(A, packages, max_stored=100, max_bytes=1 << 20)
    await first.set_last_resort(A, StoredKeyPackage(b"last", b"l" * 32, 10**10))
    claims = [(first if n % 2 else second).claim_key_package(A, 0) for n in range(100)]
    served = await asyncio.gather(*claims)
    single_use = [p for p in served if p != b"last"]
    assert sorted(single_use) == sorted(p.package for p in packages)
    assert served.count(b"last") == 60
    assert await first.count_key_packages(A, 0) == (0, True)


async def test_seqs_become_visible_in_order_under_writers_on_two_nodes(
    nodes: tuple[PostgresStorage, PostgresStorage],
) -> None:
    first, second = nodes
    await make_group(first, G, (A, B, C))
    sends = 200
    seen: list[int] = []
    done = asyncio.Event()

    async def reader() -> None:
        # A reader that only ever asks for what is after the last seq it saw
        # would miss a message whose lower seq became visible after a higher one.
        last = 0
        while True:
            finished = done.is_set()
            batch = await second.fetch(C, after_seq=last, limit=50, max_bytes=1 << 20, now_ms=1)
            seen.extend(m.seq for m in batch)
            if batch:
                last = batch[-1].seq
            elif finished:
                return

    async def writer(store: PostgresStorage, sender: bytes, count: int) -> list[int]:
        got = []
        for n in range(count):
            _epoch, delivered = await store.send_application(
                G, epoch=0, oldest_epoch=0, delivery=delivery(sender, b"%d" % n, depth_cap=10**6)
            )
            got.append(delivered.seqs[C])
        return got

    reading = asyncio.create_task(reader())
    written = await asyncio.gather(
        *(writer(store, sender, sends // 4) for store in nodes for sender in (A, B))
    )
    done.set()
    await reading
    everything = sorted(seq for seqs in written for seq in seqs)
    assert len(set(everything)) == sends
    assert seen == everything  # strictly increasing, and none skipped
    assert await store_problems(first) == NO_PROBLEMS


async def test_the_queued_bytes_quota_holds_across_nodes(
    nodes: tuple[PostgresStorage, PostgresStorage],
) -> None:
    first, second = nodes
    await make_group(first, G, (A, B))
    calls = [
        (first if n % 2 else second).send_application(
            G,
            epoch=0,
            oldest_epoch=0,
            delivery=delivery(A, bytes(100), depth_cap=100, quota_bytes=1000),
        )
        for n in range(30)
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    accepted = [r for r in results if not isinstance(r, BaseException) and r[1].seqs]
    refused = [r for r in results if isinstance(r, QuotaExceededError)]
    assert (len(accepted), len(refused)) == (10, 20)
    assert await rows(first, "SELECT bytes FROM queued_bytes") == [(1000,)]
    assert await store_problems(first) == NO_PROBLEMS


async def test_a_shared_rate_bucket_never_grants_more_than_it_holds(
    nodes: tuple[PostgresStorage, PostgresStorage],
) -> None:
    first, second = nodes
    # 0.001 tokens per second: nothing measurable refills during the test.
    rate, capacity = 0.001, 50.0
    takes = [(first if n % 2 else second).take_rate_tokens(A, 3, rate, capacity) for n in range(40)]
    granted = await asyncio.gather(*takes)
    # 40 racing takes of 3 from two nodes: the bucket's 50, once (16 times 3, then 2).
    assert sum(granted) == pytest.approx(capacity, abs=0.01)
    assert sorted(granted, reverse=True)[:17] == pytest.approx([3.0] * 16 + [2.0], abs=0.01)
    assert await second.take_rate_tokens(A, 1, rate, capacity) == pytest.approx(0, abs=0.01)
    assert await first.take_rate_tokens(B, 1, rate, capacity) == 1  # another identity
    # Billed work puts the bucket into debt, at most one capacity deep: full
    # again in two capacities' refill time (20 s), more than one (10 s) even
    # on a machine that stalls the test for seconds between the two reads.
    await first.debit_rate_tokens(B, 500, 1.0, 10.0)
    (full_at,) = (await rows(first, "SELECT full_at FROM rate_limits WHERE identity_key = ?", B))[0]
    (now,) = (await rows(first, "SELECT extract(epoch FROM clock_timestamp())::float8"))[0]
    assert 10.0 < full_at - now <= 2 * 10.0 / 1.0


async def test_full_rate_buckets_are_cleaned_up(
    nodes: tuple[PostgresStorage, PostgresStorage],
) -> None:
    first, _second = nodes
    await first.take_rate_tokens(A, 5, 1_000_000.0, 10.0)  # full again in 5 µs
    await first.take_rate_tokens(B, 5, 0.001, 10.0)  # full again in 83 minutes
    # The cleanup round compares with the database's clock, which has moved on.
    unused = await first.remove_unused(now_ms=0, retention=Retention(group_idle_ms=1))
    assert unused.rate_limits == 1
    assert await rows(first, "SELECT identity_key FROM rate_limits") == [(B,)]


async def test_acks_and_fan_outs_racing_on_two_nodes_leave_no_orphan(
    nodes: tuple[PostgresStorage, PostgresStorage],
) -> None:
    # Two recipients acknowledging the last two references to one payload at
    # once: exactly one of them frees it.
    first, second = nodes
    await make_group(first, G, (A, B, C, D))
    for round_ in range(30):
        await first.send_application(
            G, epoch=0, oldest_epoch=0, delivery=delivery(A, b"m%d" % round_, depth_cap=1000)
        )
        await asyncio.gather(
            first.ack(B, 2**62),
            second.ack(C, 2**62),
            first.ack(D, 2**62),
            second.send_application(
                G, epoch=0, oldest_epoch=0, delivery=delivery(B, b"n%d" % round_, depth_cap=1000)
            ),
        )
    await asyncio.gather(*(store.ack(who, 2**62) for store in nodes for who in (A, B, C, D)))
    assert await rows(first, "SELECT count(*) FROM payloads") == [(0,)]
    assert await store_problems(first) == NO_PROBLEMS


# ---- wake-ups across nodes -------------------------------------------------------


async def test_a_delivery_on_one_node_wakes_a_waiter_on_the_other(
    nodes: tuple[PostgresStorage, PostgresStorage],
) -> None:
    first, second = nodes
    notifier = DeliveryNotifier()
    await second.watch_deliveries(notifier)
    await make_group(first, G, (A, B))
    for round_ in range(20):
        with notifier.watch(B) as watch:
            watch.clear()
            before = await second.fetch(B, after_seq=0, limit=100, max_bytes=1 << 20, now_ms=1)
            assert len(before) == round_
            # Stored between the waiter's read and its wait: the wake-up must
            # not be lost (the node listened before any waiter read).
            await first.send_application(
                G, epoch=0, oldest_epoch=0, delivery=delivery(A, b"m%d" % round_, depth_cap=100)
            )
            assert await watch.wait(10.0)
    # Only the recipient's waiters wake, and a refused call announces nothing.
    with notifier.watch(A) as other, notifier.watch(B) as watch:
        with pytest.raises(EpochConflictError):
            await first.send_application(
                G, epoch=5, oldest_epoch=0, delivery=delivery(A, b"refused")
            )
        await first.send_application(
            G, epoch=0, oldest_epoch=0, delivery=delivery(A, b"last", depth_cap=100)
        )
        assert await watch.wait(10.0)
        assert not await other.wait(0)


async def test_a_lost_listener_connection_wakes_everyone_when_it_is_back(
    nodes: tuple[PostgresStorage, PostgresStorage],
) -> None:
    first, second = nodes
    notifier = DeliveryNotifier()
    await second.watch_deliveries(notifier)
    with notifier.watch(B) as watch:
        # The listener's connection is cut (a database restart, a network
        # failure): whatever was announced meanwhile is lost, so once it is
        # back every waiter re-reads its queue.
        await rows(
            first,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query LIKE 'LISTEN %' AND pid != pg_backend_pid()",
        )
        assert await watch.wait(30.0)
    # And it listens again.
    await make_group(first, G, (A, B))
    with notifier.watch(B) as watch:
        await first.send_application(G, epoch=0, oldest_epoch=0, delivery=delivery(A, b"m"))
        assert await watch.wait(10.0)


async def test_writes_beyond_the_budget_are_refused_at_once(pg_url: str) -> None:
    store = await PostgresStorage.open(pg_url, budget_bytes=1000)
    try:
        await make_group(store, G, (A, B))
        # Connections of the test's own, beside the store's pool.
        blocker = await psycopg.AsyncConnection.connect(pg_url, autocommit=True)
        probe = await psycopg.AsyncConnection.connect(pg_url, autocommit=True)
        async with blocker, probe, blocker.transaction():
            # The group row held elsewhere: the first send waits in the database.
            await blocker.execute("SELECT 1 FROM groups FOR UPDATE")
            first = asyncio.ensure_future(
                store.send_application(G, epoch=0, oldest_epoch=0, delivery=delivery(A, bytes(600)))
            )
            while True:  # until the first send waits for the row lock
                cursor = await probe.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                )
                row = await cursor.fetchone()
                if row is not None and row[0]:
                    break
            assert store.pending_bytes == 600
            with pytest.raises(UnavailableError):
                await store.send_application(
                    G, epoch=0, oldest_epoch=0, delivery=delivery(B, bytes(600))
                )
            assert await store.ack(B, 0) == 0  # a call without a payload is not held back
        assert (await first)[1].seqs == {B: 1}
        assert store.pending_bytes == 0
        _epoch, delivered = await store.send_application(
            G, epoch=0, oldest_epoch=0, delivery=delivery(B, bytes(5000))
        )
        assert delivered.seqs == {A: 1}
    finally:
        await store.close()
