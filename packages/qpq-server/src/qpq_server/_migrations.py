"""Versioned schema migrations, applied in order at start, each in one transaction.

Append new migrations; never edit or renumber one that has shipped.
"""

from __future__ import annotations

__all__ = ["MIGRATIONS"]

#: (version, description, statements)
MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (
        1,
        "users, key directory, queues, group epochs, endpoints",
        (
            """CREATE TABLE usernames (
                identity_key BLOB PRIMARY KEY,
                username TEXT NOT NULL,
                username_key TEXT NOT NULL UNIQUE
            )""",
            """CREATE TABLE key_packages (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                identity_key BLOB NOT NULL,
                package BLOB NOT NULL,
                fingerprint BLOB NOT NULL,
                not_after INTEGER NOT NULL
            )""",
            "CREATE INDEX key_packages_by_identity ON key_packages (identity_key, id)",
            "CREATE INDEX key_packages_by_expiry ON key_packages (not_after)",
            """CREATE TABLE last_resort (
                identity_key BLOB PRIMARY KEY,
                package BLOB NOT NULL,
                fingerprint BLOB NOT NULL,
                not_after INTEGER NOT NULL
            )""",
            # last_seq survives acks, expiry and account deletion: a seq is never reused.
            """CREATE TABLE queues (
                recipient BLOB PRIMARY KEY,
                last_seq INTEGER NOT NULL,
                depth INTEGER NOT NULL
            )""",
            """CREATE TABLE messages (
                recipient BLOB NOT NULL,
                seq INTEGER NOT NULL,
                sender BLOB NOT NULL,
                payload BLOB NOT NULL,
                enqueued_at_ms INTEGER NOT NULL,
                expires_at_ms INTEGER NOT NULL,
                PRIMARY KEY (recipient, seq)
            )""",
            "CREATE INDEX messages_by_expiry ON messages (expires_at_ms)",
            """CREATE TABLE group_epochs (
                group_id BLOB PRIMARY KEY,
                commit_epoch INTEGER NOT NULL
            )""",
            """CREATE TABLE endpoints (
                identity_key BLOB PRIMARY KEY,
                endpoints TEXT NOT NULL,
                observed_host TEXT,
                observed_port INTEGER,
                updated_at_ms INTEGER NOT NULL
            )""",
        ),
    ),
)
