"""The SQLCipher state store: encryption, permissions, atomicity, reload."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path
from typing import Any

import pytest

from qpq_client import GroupStatus, StateError, WrongPassphraseError, _state
from qpq_client._schema import MIGRATIONS
from qpq_client._state import StateStore
from qpq_core import Identity, MlsClient


def test_files_are_private_and_encrypted(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = StateStore.open(home, "pw", create=True)
    with store.transaction() as tx:
        tx.set_identity(b"s" * 32, "alice-secret-name")
    store.close()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    for path in home.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert b"alice-secret-name" not in (home / "state.db").read_bytes()


def test_wrong_passphrase_is_a_clear_error(tmp_path: Path) -> None:
    StateStore.open(tmp_path, "right", create=True).close()
    with pytest.raises(WrongPassphraseError, match="wrong passphrase"):
        StateStore.open(tmp_path, "wrong")


def test_failed_transaction_keeps_previous_state(tmp_path: Path) -> None:
    store = StateStore.open(tmp_path, "pw", create=True)
    with store.transaction() as tx:
        tx.apply_changes([(b"k1", b"v1")])
        tx.set_processed_seq(5)

    def crash_midway() -> None:
        with store.transaction() as tx:
            tx.apply_changes([(b"k1", None), (b"k2", b"v2")])
            tx.set_processed_seq(9)
            raise RuntimeError("crash in the middle")

    with pytest.raises(RuntimeError):
        crash_midway()
    assert store.mls_rows() == [(b"k1", b"v1")]
    assert store.processed_seq() == 5
    store.close()


def test_database_error_rolls_back_and_is_typed(tmp_path: Path) -> None:
    store = StateStore.open(tmp_path, "pw", create=True)
    with store.transaction() as tx:
        tx.add_group(b"g1", "friends", named=True)

    def clash() -> None:
        with store.transaction() as tx:
            tx.apply_changes([(b"k", b"v")])
            tx.add_group(b"g2", "friends", named=True)  # name is UNIQUE

    with pytest.raises(StateError):
        clash()
    assert store.mls_rows() == []
    assert [g.name for g in store.groups()] == ["friends"]
    store.close()


def test_reload_from_rows_continues_the_group(tmp_path: Path) -> None:
    alice_id, bob_id = Identity.generate(), Identity.generate()
    store = StateStore.open(tmp_path, "pw", create=True)
    alice = MlsClient(alice_id)
    bob = MlsClient(bob_id)
    group = alice.create_group()
    kp = bob.create_key_packages(1).packages[0]
    bundle = alice.add_members(group.group_id, [kp])
    merged = alice.merge_pending_commit(group.group_id)
    with store.transaction() as tx:
        for change in (group.changes, bundle.changes, merged.changes):
            tx.apply_changes(change)
    assert bundle.welcome is not None
    bob.join_from_welcome(bundle.welcome)
    store.close()

    reopened = StateStore.open(tmp_path, "pw")
    restored = MlsClient(alice_id, reopened.mls_rows())
    message = restored.encrypt(group.group_id, b"after restart").message
    assert bob.process(message).plaintext == b"after restart"  # type: ignore[union-attr]
    # A change that is never persisted is forgotten by reload.
    restored.encrypt(group.group_id, b"lost")
    restored.reload(reopened.mls_rows())
    assert restored.epoch(group.group_id) == 1
    reopened.close()


def test_a_refused_passphrase_statement_is_not_quoted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    StateStore.open(tmp_path, "first", create=True).close()
    real_connect = _state.sqlcipher.connect

    class Quoting:
        """A connection whose error quotes the statement, as SQLite's syntax errors do."""

        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def execute(self, sql: str, *args: Any) -> Any:
            if sql.startswith("PRAGMA key"):
                raise _state.sqlcipher.OperationalError(f"near {sql!r}: syntax error")
            return self._inner.execute(sql, *args)

        def close(self) -> None:
            self._inner.close()

    monkeypatch.setattr(_state.sqlcipher, "connect", lambda *a, **k: Quoting(real_connect(*a, **k)))
    with pytest.raises(StateError) as refused:
        StateStore.open(tmp_path, "secret passphrase")
    assert "secret passphrase" not in str(refused.value)
    assert refused.value.__suppress_context__  # no chained message in a traceback either


@pytest.mark.timeout(60)
async def test_writers_committing_together_share_syncs_and_none_waits_forever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StateStore.open(tmp_path, "pw", create=True)
    synced: list[Path] = []
    sync_file = _state._sync_file

    def counted(path: Path) -> None:
        sync_file(path)
        synced.append(path)

    monkeypatch.setattr(_state, "_sync_file", counted)

    async def writer(turns: int) -> None:
        # Each writer wakes on its own loop turns, so some call in the very
        # turn a sync ends: they must neither wait on it again nor spin.
        for seq in range(10):
            with store.transaction(durable=False) as tx:
                tx.set_processed_seq(turns * 100 + seq)
            for _ in range(turns):
                await asyncio.sleep(0)
            await store.sync_to_disk()

    await asyncio.gather(*(writer(turns) for turns in range(20)))
    assert synced, "nothing was synced"
    assert len(synced) < 200, "writers committing together each paid their own sync"
    done = len(synced)
    await store.sync_to_disk()  # nothing committed since: no sync to wait for
    assert len(synced) == done
    await store.sync_to_disk(others=True)  # another process's commits: a sync begun now
    assert len(synced) == done + 1
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again
    store.close()


def test_a_batch_commits_together_and_a_failed_write_undoes_only_itself(tmp_path: Path) -> None:
    store = StateStore.open(tmp_path, "pw", create=True)
    with store.batch():
        with store.transaction() as tx:
            tx.apply_changes([(b"k1", b"v1")])
            tx.set_processed_seq(1)

        def clash() -> None:
            with store.transaction() as tx:
                tx.apply_changes([(b"k2", b"v2")])
                tx.add_group(b"g1", "friends", named=True)
                tx.add_group(b"g2", "friends", named=True)  # name is UNIQUE

        with pytest.raises(StateError):
            clash()
        with store.transaction() as tx:
            tx.set_processed_seq(3)
        # Reads inside the batch see its writes.
        assert store.processed_seq() == 3
    assert store.mls_rows() == [(b"k1", b"v1")]
    assert store.groups() == []
    assert store.processed_seq() == 3
    store.close()


def test_a_failed_batch_keeps_nothing(tmp_path: Path) -> None:
    store = StateStore.open(tmp_path, "pw", create=True)
    with store.transaction() as tx:
        tx.set_processed_seq(5)

    def crash_midway() -> None:
        with store.batch():
            with store.transaction() as tx:
                tx.apply_changes([(b"k1", b"v1")])
                tx.set_processed_seq(9)
            raise RuntimeError("crash between two messages of a batch")

    with pytest.raises(RuntimeError):
        crash_midway()
    assert store.mls_rows() == []
    assert store.processed_seq() == 5
    with pytest.raises(StateError, match="do not nest"), store.batch(), store.batch():
        pass
    store.close()


async def test_a_write_of_another_task_never_joins_an_open_batch(tmp_path: Path) -> None:
    # A batch of received messages stays open across awaits (a name lookup
    # on the server). A write another task makes meanwhile must not become
    # part of it: it would then be undone with it, or committed by it.
    store = StateStore.open(tmp_path, "pw", create=True)
    opened, finish = asyncio.Event(), asyncio.Event()

    async def receive_batch() -> None:
        with store.batch():
            with store.transaction() as tx:
                tx.set_processed_seq(9)
            opened.set()
            await finish.wait()
            raise RuntimeError("the batch fails after the other write")

    batch = asyncio.create_task(receive_batch())
    await opened.wait()
    with (
        pytest.raises(StateError, match="another operation of this client is writing"),
        store.transaction() as tx,
    ):
        tx.set_setting("invites", "anyone")
    finish.set()
    with pytest.raises(RuntimeError):
        await batch
    assert store.processed_seq() == 0
    assert store.setting("invites") is None
    # Once the batch is over, the write is its own transaction.
    with store.transaction() as tx:
        tx.set_setting("invites", "anyone")
    assert store.setting("invites") == "anyone"
    store.close()


def test_schema_5_remembers_groups_that_ended_and_archives_an_entry_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A profile at schema 4 with a group we were removed from and one we are in.
    monkeypatch.setattr(StateStore, "_migrate", _migrate_to(4))
    store = StateStore.open(tmp_path, "pw", create=True)
    # Rows as that schema's client wrote them.
    store._db.executescript(
        "INSERT INTO groups (group_id, name, state, named, created_at)"
        " VALUES (x'676f6e65', 'old', 'removed', 1, 1), (x'68657265', 'live', 'active', 1, 1);"
        "INSERT INTO history (group_id, kind, sender, body, sent_at, received_at)"
        " VALUES (x'676f6e65', 'text', NULL, 'said before', 1, 1);"
    )
    store.close()
    monkeypatch.undo()
    store = StateStore.open(tmp_path, "pw")
    try:
        # What ended before the epoch was recorded counts as ended at epoch 0.
        assert (store.ended_epoch(b"gone"), store.ended_epoch(b"here")) == (0, None)
        with store.transaction() as tx:
            tx.end_group(b"gone", 7)
            tx.end_group(b"gone", 3)  # the highest epoch held stays
            tx.archive_group(b"gone")
            tx.add_group(b"gone", "old-2", named=False)
            tx.add_history(b"gone", "event", "you joined", sender=None)
        assert store.ended_epoch(b"gone") == 7
        new = store.group_by_id(b"gone")
        assert new is not None
        assert (new.name, new.status, new.archived_from) == ("old-2", GroupStatus.ACTIVE, None)
        (old,) = [g for g in store.groups() if g.archived_from == b"gone"]
        assert (old.name, old.status, old.mls_group_id) == ("old", GroupStatus.REMOVED, b"gone")
        assert old.group_id != b"gone"
        assert store.group_by_key(old.group_id) == old
        assert [r.body for r in store.history(old.group_id)] == ["said before"]
        assert [r.body for r in store.history(b"gone")] == ["you joined"]
    finally:
        store.close()


def _migrate_to(version: int) -> Any:
    def migrate(store: StateStore) -> None:
        db = store._db
        for target, script in MIGRATIONS:
            if target > version:
                break
            for statement in script.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {target}")

    return migrate


def test_per_message_lookups_read_by_index_not_the_whole_table(tmp_path: Path) -> None:
    # A follower looks up the unshown lines and the message's group for every
    # batch it receives: on a long history or many groups a full read of the
    # table is a cost that grows with the profile's age.
    store = StateStore.open(tmp_path, "pw", create=True)
    with store.transaction() as tx:
        tx.add_group(b"g1", "friends", named=True)
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    store.history(unshown=True)
    store.history(b"g1")
    store.history(direct="unconfirmed")
    store.group_by_id(b"g1")
    store.group_by_key(b"g1")
    store.group_by_name("friends")
    store._db.set_trace_callback(None)
    assert len(statements) == 6
    for sql in statements:
        # The trace shows the statement with its parameters bound.
        plan = " | ".join(row[3] for row in store._db.execute(f"EXPLAIN QUERY PLAN {sql}"))
        assert "SCAN" not in plan, (sql, plan)
    store.close()
