"""Change sets are the whole truth: rebuild from rows and continue; drop a
change set and the next load is the previous state."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from conftest import User, make_group, secret

from qpq_core import (
    ApplicationMessage,
    ChangeSet,
    CommitApplied,
    Identity,
    MlsClient,
    ReplayedMessageError,
    StateCorruptError,
)


def test_restart_mid_conversation(alice: User, bob: User, carol: User) -> None:
    group_id = make_group(alice, bob)
    for text in (b"one", b"two"):
        message = alice.persist(alice.client.encrypt(group_id, text)).message
        bob.persist(bob.client.process(message))
    bob.restart()
    alice.restart()
    assert bob.client.group_ids() == (group_id,)
    assert secret(alice, group_id) == secret(bob, group_id)
    message = alice.persist(alice.client.encrypt(group_id, b"three")).message
    result = bob.persist(bob.client.process(message))
    assert isinstance(result, ApplicationMessage)
    assert result.plaintext == b"three"
    # A pending commit survives a restart too.
    bundle = alice.persist(alice.client.add_members(group_id, [carol.key_package()]))
    alice.restart()
    assert alice.client.has_pending_commit(group_id)
    alice.persist(alice.client.merge_pending_commit(group_id))
    assert bundle.welcome is not None
    carol.persist(carol.client.join_from_welcome(bundle.welcome))
    bob.persist(bob.client.process(bundle.commit))
    bob.restart()
    carol.restart()
    assert secret(alice, group_id) == secret(bob, group_id) == secret(carol, group_id)


def test_not_persisted_means_previous_state(alice: User, bob: User) -> None:
    group_id = make_group(alice, bob)
    message = alice.persist(alice.client.encrypt(group_id, b"hello")).message
    before = secret(bob, group_id)
    # Bob processes but "crashes" before his transaction commits.
    bob.client.process(message)
    with pytest.raises(ReplayedMessageError):
        bob.client.process(message)
    bob.client.reload(bob.rows.items())
    result = bob.persist(bob.client.process(message))
    assert isinstance(result, ApplicationMessage)
    assert result.plaintext == b"hello"

    # The same for a commit: drop the change set, reload, process again.
    update = alice.persist(alice.client.self_update(group_id))
    alice.persist(alice.client.merge_pending_commit(group_id))
    bob.client.process(update.commit)
    assert bob.client.epoch(group_id) == 2
    bob.client.reload(bob.rows.items())
    assert bob.client.epoch(group_id) == 1
    assert secret(bob, group_id) == before
    applied = bob.persist(bob.client.process(update.commit))
    assert isinstance(applied, CommitApplied)
    assert applied.epoch == 2
    assert secret(alice, group_id) == secret(bob, group_id)


def test_change_sets_in_a_real_sqlite_file(tmp_path: Path, alice: User) -> None:
    database = tmp_path / "bob.db"

    def open_db() -> sqlite3.Connection:
        db = sqlite3.connect(database)
        db.execute(
            "CREATE TABLE IF NOT EXISTS mls_kv (key BLOB PRIMARY KEY, value BLOB) WITHOUT ROWID"
        )
        return db

    def persist(db: sqlite3.Connection, changes: ChangeSet) -> None:
        with db:  # one transaction
            for key, value in changes:
                if value is None:
                    db.execute("DELETE FROM mls_kv WHERE key = ?", (key,))
                else:
                    db.execute("INSERT OR REPLACE INTO mls_kv VALUES (?, ?)", (key, value))

    identity = Identity.generate()
    db = open_db()
    bob = MlsClient(identity)
    created = bob.create_key_packages(1)
    persist(db, created.changes)
    group_id = alice.persist(alice.client.create_group()).group_id
    bundle = alice.persist(alice.client.add_members(group_id, list(created.packages)))
    alice.persist(alice.client.merge_pending_commit(group_id))
    assert bundle.welcome is not None
    persist(db, bob.join_from_welcome(bundle.welcome).changes)
    db.close()

    for n in range(3):
        db = open_db()
        rows = db.execute("SELECT key, value FROM mls_kv").fetchall()
        bob = MlsClient(Identity.from_secret_bytes(identity.secret_bytes()), rows)
        message = alice.persist(alice.client.encrypt(group_id, b"msg %d" % n)).message
        result = bob.process(message)
        assert isinstance(result, ApplicationMessage)
        assert result.plaintext == b"msg %d" % n
        persist(db, result.changes)
        reply = bob.encrypt(group_id, b"reply %d" % n)
        persist(db, reply.changes)
        assert isinstance(alice.persist(alice.client.process(reply.message)), ApplicationMessage)
        db.close()


def test_unreadable_state_raises_state_corrupt(alice: User, bob: User) -> None:
    group_id = make_group(alice, bob)
    rows = {k: (b"{not json" if k.startswith(b"Tree") else v) for k, v in bob.rows.items()}
    client = MlsClient(bob.identity, rows.items())
    with pytest.raises(StateCorruptError):
        client.epoch(group_id)


def test_stored_rows_are_key_value_pairs(alice: User, bob: User) -> None:
    group_id = make_group(alice, bob)
    as_lists = [[bytearray(k), memoryview(v)] for k, v in bob.rows.items()]
    client = MlsClient(bob.identity, as_lists)  # type: ignore[arg-type]
    assert client.group_ids() == (group_id,)
    with pytest.raises(ValueError, match="pair"):
        MlsClient(bob.identity, [(b"key",)])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        MlsClient(bob.identity, [1])  # type: ignore[list-item]
