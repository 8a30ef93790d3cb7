"""Versioned schema migrations of both backends, applied in order at start, each in
one transaction.

One list of versions, each with a description and its statements in each
dialect: SQLite (the SQLCipher backend) and PostgreSQL. The statements differ
where the dialects do (BLOB and BYTEA, SQLite trigger bodies and PL/pgSQL
trigger functions); both build the same tables, indexes and triggers, which
the storage tests check for each backend.

Append new migrations; never edit or renumber one that has shipped.
Versions need not be consecutive: the runner applies, in order, each
version above the stored one.

A version may have statements in one dialect only, for a table that only
one backend needs (version 6: rate limits that several nodes share).

A step may be Python instead of SQL (a :data:`Step`): a function given the
migration's transaction, for data that SQL cannot compute (version 8 keys
the stored usernames with ICU). It runs where it stands among the
statements, in the same transaction, on both backends; PostgreSQL nodes
starting together take turns for it as for the statements.

:func:`migrate` applies them, written once for both backends: each version
in a transaction of its own; on PostgreSQL nodes starting together take
turns (an advisory lock held for each transaction, the stored version read
again under it).

PostgreSQL support came with version 5, so no PostgreSQL database holds an
older schema's data: its statements for versions 1 to 4 only build each
version's tables (no copying from tables an earlier version had, and no
tables that a later version drops).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from qpq_server._engine import Txn
from qpq_server._errors import StorageError
from qpq_server._usernames import username_keys

__all__ = [
    "MIGRATIONS",
    "POSTGRES_MIGRATIONS",
    "SCHEMA",
    "Migration",
    "Step",
    "Version",
    "migrate",
]

#: A step of a migration written in Python: it gets the migration's transaction.
Step = Callable[[Txn], None]
#: One version as the runner takes it: (version, description, statements and steps).
Version = tuple[int, str, tuple[str | Step, ...]]


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema version: what it does, and its statements in each dialect.

    A statement may be a :data:`Step` (Python) in either dialect's list.
    """

    version: int
    description: str
    sqlite: tuple[str | Step, ...]
    postgres: tuple[str | Step, ...]


def _key_usernames(txn: Txn) -> None:
    """Migration 8's step: the keys of every stored name and hold, computed by ICU.

    A key that two names get goes to the name it is the folded key of, else
    to the name registered first: the ``rowid`` order on SQLite; on
    PostgreSQL, which has none, the order of the rows in the table's storage
    (``ctid``), which is the order they were last written in (a rename
    writes its row again) unless VACUUM let a later row into freed space.
    So each name keeps its folded key unless an earlier name is the same up
    to case (``b0b`` before ``bob``), and a look-alike stored before
    (``aIice``) keeps its own folded key while ``alice`` keeps ``alice``.
    A name left without keys keeps its row and spelling (``resolveIdentity``
    answers it); nobody can register it while the key's holder holds it.

    A hold stored only the key of its name (the skeleton of the case fold),
    not the spelling: it holds the keys of that key, the folded one. Holds
    come after names; of holds that get one key, the latest release keeps it.
    """
    order = "ctid" if txn.engine.arrays else "rowid"
    names = txn.all(f"SELECT identity_key, username FROM usernames ORDER BY {order}")  # noqa: S608 - a constant
    keyed = [(bytes(who), username_keys(str(name))) for who, name in names]
    claims: list[tuple[str, bytes, int | None]] = [(keys[0], who, None) for who, keys in keyed]
    claims += [(key, who, None) for who, keys in keyed for key in keys[1:]]
    for old_key, who, released_at_ms in txn.all(
        "SELECT username_key, identity_key, released_at_ms FROM username_holds "
        "ORDER BY released_at_ms DESC, username_key"
    ):
        claims += [(key, bytes(who), int(released_at_ms)) for key in username_keys(str(old_key))]
    # In order: a key taken by an earlier claim stays with it.
    txn.executemany(
        "INSERT INTO username_keys (key, identity_key, released_at_ms) VALUES (?, ?, ?) "
        "ON CONFLICT (key) DO NOTHING",
        claims,
    )


SCHEMA: tuple[Migration, ...] = (
    Migration(
        1,
        "users, key directory, queues, group epochs, endpoints",
        sqlite=(
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
        postgres=(
            """CREATE TABLE usernames (
                identity_key BYTEA PRIMARY KEY,
                username TEXT NOT NULL,
                username_key TEXT NOT NULL UNIQUE
            )""",
            """CREATE TABLE key_packages (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                identity_key BYTEA NOT NULL,
                package BYTEA NOT NULL,
                fingerprint BYTEA NOT NULL,
                not_after BIGINT NOT NULL
            )""",
            "CREATE INDEX key_packages_by_identity ON key_packages (identity_key, id)",
            "CREATE INDEX key_packages_by_expiry ON key_packages (not_after)",
            """CREATE TABLE last_resort (
                identity_key BYTEA PRIMARY KEY,
                package BYTEA NOT NULL,
                fingerprint BYTEA NOT NULL,
                not_after BIGINT NOT NULL
            )""",
            """CREATE TABLE queues (
                recipient BYTEA PRIMARY KEY,
                last_seq BIGINT NOT NULL,
                depth BIGINT NOT NULL
            )""",
            """CREATE TABLE endpoints (
                identity_key BYTEA PRIMARY KEY,
                endpoints TEXT NOT NULL,
                observed_host TEXT,
                observed_port INTEGER,
                updated_at_ms BIGINT NOT NULL
            )""",
        ),
    ),
    Migration(
        2,
        "store each payload once: payloads table, queue rows reference it",
        sqlite=(
            # One row per enqueue or publish, however many recipients it has.
            """CREATE TABLE payloads (
                id INTEGER PRIMARY KEY,
                sender BLOB NOT NULL,
                payload BLOB NOT NULL,
                enqueued_at_ms INTEGER NOT NULL
            )""",
            # One row per (recipient, seq); the foreign key keeps a referenced
            # payload from being deleted.
            """CREATE TABLE deliveries (
                recipient BLOB NOT NULL,
                seq INTEGER NOT NULL,
                payload_id INTEGER NOT NULL REFERENCES payloads (id),
                expires_at_ms INTEGER NOT NULL,
                PRIMARY KEY (recipient, seq)
            ) WITHOUT ROWID""",
            # Each old message becomes its own payload (same rowid as id).
            "INSERT INTO payloads (id, sender, payload, enqueued_at_ms) "
            "SELECT rowid, sender, payload, enqueued_at_ms FROM messages",
            "INSERT INTO deliveries (recipient, seq, payload_id, expires_at_ms) "
            "SELECT recipient, seq, rowid, expires_at_ms FROM messages",
            "DROP TABLE messages",
            "CREATE INDEX deliveries_by_expiry ON deliveries (expires_at_ms)",
            "CREATE INDEX deliveries_by_payload ON deliveries (payload_id)",
            # Every path that removes a queue row (ack, expiry, account
            # deletion, and any added later) frees the payload with its last
            # reference, in the same statement and so the same transaction.
            """CREATE TRIGGER deliveries_release_payload AFTER DELETE ON deliveries
            BEGIN
                DELETE FROM payloads WHERE id = OLD.payload_id
                AND NOT EXISTS (SELECT 1 FROM deliveries WHERE payload_id = OLD.payload_id);
            END""",
        ),
        postgres=(
            """CREATE TABLE payloads (
                id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                sender BYTEA NOT NULL,
                payload BYTEA NOT NULL,
                enqueued_at_ms BIGINT NOT NULL
            )""",
            """CREATE TABLE deliveries (
                recipient BYTEA NOT NULL,
                seq BIGINT NOT NULL,
                payload_id BIGINT NOT NULL REFERENCES payloads (id),
                expires_at_ms BIGINT NOT NULL,
                PRIMARY KEY (recipient, seq)
            )""",
            "CREATE INDEX deliveries_by_expiry ON deliveries (expires_at_ms)",
            "CREATE INDEX deliveries_by_payload ON deliveries (payload_id)",
            # The payload row is locked before its references are counted: of
            # two transactions removing its last two references, the second
            # waits for the first to commit and then sees both gone.
            """CREATE FUNCTION deliveries_release_payload() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM 1 FROM payloads WHERE id = OLD.payload_id FOR UPDATE;
                DELETE FROM payloads WHERE id = OLD.payload_id
                AND NOT EXISTS (SELECT 1 FROM deliveries WHERE payload_id = OLD.payload_id);
                RETURN NULL;
            END $$""",
            "CREATE TRIGGER deliveries_release_payload AFTER DELETE ON deliveries "
            "FOR EACH ROW EXECUTE FUNCTION deliveries_release_payload()",
        ),
    ),
    Migration(
        3,
        "verified group state: groups, their public state, rosters, accepted commits; "
        "per-sender queue shares and gap notices",
        sqlite=(
            # The epoch rule now rests on the verified state below.
            "DROP TABLE group_epochs",
            """CREATE TABLE groups (
                group_id BLOB PRIMARY KEY,
                epoch INTEGER NOT NULL,
                group_info BLOB NOT NULL,
                created_at_ms INTEGER NOT NULL,
                updated_at_ms INTEGER NOT NULL
            )""",
            # The group's OpenMLS public state as change-set rows (qpq-core's
            # journaling storage): applied in the same transaction as the fan-out.
            """CREATE TABLE group_state (
                group_id BLOB NOT NULL REFERENCES groups (group_id),
                key BLOB NOT NULL,
                value BLOB NOT NULL,
                PRIMARY KEY (group_id, key)
            ) WITHOUT ROWID""",
            """CREATE TABLE group_members (
                group_id BLOB NOT NULL REFERENCES groups (group_id),
                identity_key BLOB NOT NULL,
                PRIMARY KEY (group_id, identity_key)
            ) WITHOUT ROWID""",
            "CREATE INDEX group_members_by_identity ON group_members (identity_key)",
            # The commit accepted for each recent epoch: what an epochConflict names.
            """CREATE TABLE group_commits (
                group_id BLOB NOT NULL REFERENCES groups (group_id),
                epoch INTEGER NOT NULL,
                commit_hash BLOB NOT NULL,
                PRIMARY KEY (group_id, epoch)
            ) WITHOUT ROWID""",
            # Who queued each entry, so that one sender's share of a queue is bounded.
            "ALTER TABLE deliveries ADD COLUMN sender BLOB",
            "UPDATE deliveries SET sender = "
            "(SELECT sender FROM payloads WHERE payloads.id = deliveries.payload_id)",
            """CREATE TABLE queue_shares (
                recipient BLOB NOT NULL,
                sender BLOB NOT NULL,
                depth INTEGER NOT NULL,
                PRIMARY KEY (recipient, sender)
            ) WITHOUT ROWID""",
            "INSERT INTO queue_shares (recipient, sender, depth) "
            "SELECT recipient, sender, count(*) FROM deliveries GROUP BY recipient, sender",
            # A gap notice is a queue entry whose payload names the group.
            "ALTER TABLE payloads ADD COLUMN gap INTEGER NOT NULL DEFAULT 0",
            # At most one unacknowledged gap notice per recipient and group.
            """CREATE TABLE gaps (
                recipient BLOB NOT NULL,
                group_id BLOB NOT NULL,
                seq INTEGER NOT NULL,
                PRIMARY KEY (recipient, group_id)
            ) WITHOUT ROWID""",
            # Every path that removes a queue entry (ack, expiry, account deletion)
            # releases its share and its gap notice in the same statement.
            """CREATE TRIGGER deliveries_release_share AFTER DELETE ON deliveries
            BEGIN
                UPDATE queue_shares SET depth = depth - 1
                WHERE recipient = OLD.recipient AND sender = OLD.sender;
                DELETE FROM queue_shares
                WHERE recipient = OLD.recipient AND sender = OLD.sender AND depth <= 0;
                DELETE FROM gaps WHERE recipient = OLD.recipient AND seq = OLD.seq;
            END""",
        ),
        postgres=(
            """CREATE TABLE groups (
                group_id BYTEA PRIMARY KEY,
                epoch BIGINT NOT NULL,
                group_info BYTEA NOT NULL,
                created_at_ms BIGINT NOT NULL,
                updated_at_ms BIGINT NOT NULL
            )""",
            """CREATE TABLE group_state (
                group_id BYTEA NOT NULL REFERENCES groups (group_id),
                key BYTEA NOT NULL,
                value BYTEA NOT NULL,
                PRIMARY KEY (group_id, key)
            )""",
            """CREATE TABLE group_members (
                group_id BYTEA NOT NULL REFERENCES groups (group_id),
                identity_key BYTEA NOT NULL,
                PRIMARY KEY (group_id, identity_key)
            )""",
            "CREATE INDEX group_members_by_identity ON group_members (identity_key)",
            """CREATE TABLE group_commits (
                group_id BYTEA NOT NULL REFERENCES groups (group_id),
                epoch BIGINT NOT NULL,
                commit_hash BYTEA NOT NULL,
                PRIMARY KEY (group_id, epoch)
            )""",
            "ALTER TABLE deliveries ADD COLUMN sender BYTEA",
            """CREATE TABLE queue_shares (
                recipient BYTEA NOT NULL,
                sender BYTEA NOT NULL,
                depth BIGINT NOT NULL,
                PRIMARY KEY (recipient, sender)
            )""",
            "ALTER TABLE payloads ADD COLUMN gap INTEGER NOT NULL DEFAULT 0",
            """CREATE TABLE gaps (
                recipient BYTEA NOT NULL,
                group_id BYTEA NOT NULL,
                seq BIGINT NOT NULL,
                PRIMARY KEY (recipient, group_id)
            )""",
            """CREATE FUNCTION deliveries_release_share() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                UPDATE queue_shares SET depth = depth - 1
                WHERE recipient = OLD.recipient AND sender = OLD.sender;
                DELETE FROM queue_shares
                WHERE recipient = OLD.recipient AND sender = OLD.sender AND depth <= 0;
                DELETE FROM gaps WHERE recipient = OLD.recipient AND seq = OLD.seq;
                RETURN NULL;
            END $$""",
            "CREATE TRIGGER deliveries_release_share AFTER DELETE ON deliveries "
            "FOR EACH ROW EXECUTE FUNCTION deliveries_release_share()",
        ),
    ),
    Migration(
        4,
        "usernames unique by their UTS #39 skeleton; names given up are held for their owner",
        sqlite=(
            # Keys become skeletons (qpq_server._usernames); a name confusable
            # with one registered before it (by an earlier identity) is dropped:
            # its holder registers another.
            """CREATE TABLE usernames_by_skeleton (
                identity_key BLOB PRIMARY KEY,
                username TEXT NOT NULL,
                username_key TEXT NOT NULL UNIQUE
            )""",
            "INSERT OR IGNORE INTO usernames_by_skeleton (identity_key, username, username_key) "
            "SELECT identity_key, username, qpq_username_key(username) FROM usernames "
            "ORDER BY rowid",
            "DROP TABLE usernames",
            "ALTER TABLE usernames_by_skeleton RENAME TO usernames",
            # A name given up (rename, deleted account), reserved for its former
            # owner until the cooldown has passed.
            """CREATE TABLE username_holds (
                username_key TEXT PRIMARY KEY,
                identity_key BLOB NOT NULL,
                released_at_ms INTEGER NOT NULL
            ) WITHOUT ROWID""",
            "CREATE INDEX username_holds_by_time ON username_holds (released_at_ms)",
        ),
        postgres=(
            # The usernames table already keys names by their skeleton.
            """CREATE TABLE username_holds (
                username_key TEXT PRIMARY KEY,
                identity_key BYTEA NOT NULL,
                released_at_ms BIGINT NOT NULL
            )""",
            "CREATE INDEX username_holds_by_time ON username_holds (released_at_ms)",
        ),
    ),
    Migration(
        5,
        "retention and quotas: idle queues and groups, old endpoints, "
        "bytes each sender has queued, who created each group",
        sqlite=(
            # When a group was last written to; a group nobody used for
            # group_retention_days is removed with its state, roster and commits.
            "ALTER TABLE groups ADD COLUMN used_at_ms INTEGER NOT NULL DEFAULT 0",
            "UPDATE groups SET used_at_ms = updated_at_ms",
            "CREATE INDEX groups_by_use ON groups (used_at_ms)",
            # Who registered the group, for the per-identity count (unknown before).
            "ALTER TABLE groups ADD COLUMN creator BLOB",
            "CREATE INDEX groups_by_creator ON groups (creator)",
            # Empty queue rows by their last seq: seqs follow the clock, so
            # this finds the rows idle for long (see _storage.seq_floor).
            "CREATE INDEX queues_idle ON queues (last_seq) WHERE depth = 0",
            "CREATE INDEX endpoints_by_age ON endpoints (updated_at_ms)",
            # What each sender's stored payloads hold, each counted once
            # however many recipients it has; gap notices are the server's own.
            """CREATE TABLE queued_bytes (
                sender BLOB PRIMARY KEY,
                bytes INTEGER NOT NULL
            ) WITHOUT ROWID""",
            "INSERT INTO queued_bytes (sender, bytes) "
            "SELECT sender, sum(length(payload)) FROM payloads WHERE gap = 0 GROUP BY sender",
            # A payload goes with its last queue row (deliveries_release_payload),
            # on every path; its bytes leave the sender's count with it. The
            # charge is taken by the fan-out, as a conditional update that is
            # also the quota check.
            """CREATE TRIGGER payloads_release_quota AFTER DELETE ON payloads
            WHEN OLD.gap = 0
            BEGIN
                UPDATE queued_bytes SET bytes = bytes - length(OLD.payload)
                WHERE sender = OLD.sender;
                DELETE FROM queued_bytes WHERE sender = OLD.sender AND bytes <= 0;
            END""",
        ),
        postgres=(
            "ALTER TABLE groups ADD COLUMN used_at_ms BIGINT NOT NULL DEFAULT 0",
            "UPDATE groups SET used_at_ms = updated_at_ms",
            "CREATE INDEX groups_by_use ON groups (used_at_ms)",
            "ALTER TABLE groups ADD COLUMN creator BYTEA",
            "CREATE INDEX groups_by_creator ON groups (creator)",
            "CREATE INDEX queues_idle ON queues (last_seq) WHERE depth = 0",
            "CREATE INDEX endpoints_by_age ON endpoints (updated_at_ms)",
            """CREATE TABLE queued_bytes (
                sender BYTEA PRIMARY KEY,
                bytes BIGINT NOT NULL
            )""",
            """CREATE FUNCTION payloads_release_quota() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                UPDATE queued_bytes SET bytes = bytes - length(OLD.payload)
                WHERE sender = OLD.sender;
                DELETE FROM queued_bytes WHERE sender = OLD.sender AND bytes <= 0;
                RETURN NULL;
            END $$""",
            "CREATE TRIGGER payloads_release_quota AFTER DELETE ON payloads "
            "FOR EACH ROW WHEN (OLD.gap = 0) EXECUTE FUNCTION payloads_release_quota()",
        ),
    ),
    Migration(
        6,
        "rate limits per identity shared by the nodes of one database",
        # One SQLCipher file has one server process, which keeps its rate
        # limits in memory: this table exists only where nodes share a database.
        sqlite=(),
        postgres=(
            # full_at: when the bucket is full again, in seconds of the
            # database's clock (see _ratelimit.take_tokens); no row = full.
            """CREATE TABLE rate_limits (
                identity_key BYTEA PRIMARY KEY,
                full_at DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX rate_limits_by_time ON rate_limits (full_at)",
        ),
    ),
    Migration(
        7,
        "a version per group state, which node caches and conditional updates compare",
        # The changes stored within the group's epoch: 0 after a commit, one
        # more with each proposal; (epoch, version) names one stored state.
        sqlite=("ALTER TABLE groups ADD COLUMN version INTEGER NOT NULL DEFAULT 0",),
        postgres=("ALTER TABLE groups ADD COLUMN version BIGINT NOT NULL DEFAULT 0",),
    ),
    Migration(
        8,
        "each username's keys in a table of their own, which decides between "
        "look-alikes; holds hold every key",
        sqlite=(
            # One row per key (qpq_server._usernames.username_keys) of each
            # name (released_at_ms NULL) and of each name given up, held for
            # its former owner since released_at_ms. One primary key for
            # both: a registration and a rename at once cannot both take a key.
            """CREATE TABLE username_keys (
                key TEXT PRIMARY KEY,
                identity_key BLOB NOT NULL,
                released_at_ms INTEGER
            ) WITHOUT ROWID""",
            "CREATE INDEX username_keys_by_identity ON username_keys (identity_key)",
            "CREATE INDEX username_keys_by_release ON username_keys (released_at_ms) "
            "WHERE released_at_ms IS NOT NULL",
            _key_usernames,
            "DROP TABLE username_holds",
            # The one key column goes. SQLite drops no UNIQUE column: the
            # table is built again, its rows in the same order.
            """CREATE TABLE usernames_spelled (
                identity_key BLOB PRIMARY KEY,
                username TEXT NOT NULL
            )""",
            "INSERT INTO usernames_spelled (identity_key, username) "
            "SELECT identity_key, username FROM usernames ORDER BY rowid",
            "DROP TABLE usernames",
            "ALTER TABLE usernames_spelled RENAME TO usernames",
        ),
        postgres=(
            """CREATE TABLE username_keys (
                key TEXT PRIMARY KEY,
                identity_key BYTEA NOT NULL,
                released_at_ms BIGINT
            )""",
            "CREATE INDEX username_keys_by_identity ON username_keys (identity_key)",
            "CREATE INDEX username_keys_by_release ON username_keys (released_at_ms) "
            "WHERE released_at_ms IS NOT NULL",
            _key_usernames,
            "DROP TABLE username_holds",
            "ALTER TABLE usernames DROP COLUMN username_key",
        ),
    ),
    Migration(
        9,
        "the group each payload was delivered for, and a commit's GroupInfo digest",
        # What members check a delivery against (docs/protocol.md, section 7.1):
        # the group a message (or a commit's Welcome) was delivered for, and
        # for a commit the digest of the GroupInfo accepted with it. Rows
        # stored before read as empty (NULL).
        sqlite=(
            "ALTER TABLE payloads ADD COLUMN group_id BLOB",
            "ALTER TABLE payloads ADD COLUMN group_info_digest BLOB",
        ),
        postgres=(
            "ALTER TABLE payloads ADD COLUMN group_id BYTEA",
            "ALTER TABLE payloads ADD COLUMN group_info_digest BYTEA",
        ),
    ),
    Migration(
        10,
        "KeyPackage claims limited per target and per claimer; last-resort hand-outs counted",
        sqlite=(
            # One token bucket per target identity (claim_key: its 32 bytes)
            # and per (target, claimer) pair (64 bytes); full_at as in
            # rate_limits. Kept in the database on both backends: on
            # PostgreSQL the limits must hold across nodes.
            """CREATE TABLE key_package_claims (
                claim_key BLOB PRIMARY KEY,
                full_at REAL NOT NULL
            ) WITHOUT ROWID""",
            "CREATE INDEX key_package_claims_by_time ON key_package_claims (full_at)",
            # Claims the last-resort package answered since it was uploaded.
            "ALTER TABLE last_resort ADD COLUMN served INTEGER NOT NULL DEFAULT 0",
        ),
        postgres=(
            """CREATE TABLE key_package_claims (
                claim_key BYTEA PRIMARY KEY,
                full_at DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX key_package_claims_by_time ON key_package_claims (full_at)",
            "ALTER TABLE last_resort ADD COLUMN served BIGINT NOT NULL DEFAULT 0",
        ),
    ),
    Migration(
        11,
        "KeyPackages and last-resort packages kept per MLS ciphersuite",
        # A group takes only KeyPackages of its own ciphersuite (RFC 9420
        # §12.1.1), so each package is stored under its suite and a claim
        # names one; a last resort is kept per identity and suite. Every row
        # stored before is of the default suite, 0x0001 (the only one
        # accepted until then).
        sqlite=(
            "ALTER TABLE key_packages ADD COLUMN ciphersuite INTEGER NOT NULL DEFAULT 1",
            "CREATE INDEX key_packages_by_suite ON key_packages (identity_key, ciphersuite, id)",
            # SQLite cannot change a primary key in place: the table is rebuilt.
            """CREATE TABLE last_resort_by_suite (
                identity_key BLOB NOT NULL,
                ciphersuite INTEGER NOT NULL,
                package BLOB NOT NULL,
                fingerprint BLOB NOT NULL,
                not_after INTEGER NOT NULL,
                served INTEGER NOT NULL DEFAULT 0,
                PRIMARY KEY (identity_key, ciphersuite)
            )""",
            "INSERT INTO last_resort_by_suite "
            "(identity_key, ciphersuite, package, fingerprint, not_after, served) "
            "SELECT identity_key, 1, package, fingerprint, not_after, served FROM last_resort",
            "DROP TABLE last_resort",
            "ALTER TABLE last_resort_by_suite RENAME TO last_resort",
        ),
        postgres=(
            "ALTER TABLE key_packages ADD COLUMN ciphersuite INTEGER NOT NULL DEFAULT 1",
            "CREATE INDEX key_packages_by_suite ON key_packages (identity_key, ciphersuite, id)",
            "ALTER TABLE last_resort ADD COLUMN ciphersuite INTEGER NOT NULL DEFAULT 1",
            "ALTER TABLE last_resort DROP CONSTRAINT last_resort_pkey",
            "ALTER TABLE last_resort ADD PRIMARY KEY (identity_key, ciphersuite)",
        ),
    ),
    Migration(
        12,
        "accounts (status, creation, admitting invite) and the identities that act for them; "
        "invite codes; per-account limits; payloads charged to their sender's account",
        sqlite=(
            # An operator's invite code, stored as its SHA-256 (a code is
            # shown once, when it is made); used up by max_uses registrations.
            """CREATE TABLE invites (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                code_hash BLOB NOT NULL UNIQUE,
                max_uses INTEGER NOT NULL,
                used INTEGER NOT NULL DEFAULT 0,
                note TEXT NOT NULL DEFAULT '',
                created_at_ms INTEGER NOT NULL,
                expires_at_ms INTEGER,
                revoked_at_ms INTEGER
            )""",
            # One row per account, kept when it is deleted (a deleted account's
            # identities never authenticate again). status_version: the value
            # of account_version when its status last changed, which nodes
            # poll to close the connections of suspended and deleted accounts.
            """CREATE TABLE accounts (
                account_key BLOB PRIMARY KEY,
                status TEXT NOT NULL,
                reason TEXT NOT NULL DEFAULT '',
                created_at_ms INTEGER NOT NULL,
                changed_at_ms INTEGER NOT NULL,
                invite_id INTEGER,
                status_version INTEGER NOT NULL DEFAULT 0
            ) WITHOUT ROWID""",
            "CREATE INDEX accounts_by_version ON accounts (status_version)",
            # Which account an identity acts for: today each account has one
            # identity, whose key is the account key; devices add more rows.
            """CREATE TABLE account_identities (
                identity_key BLOB PRIMARY KEY,
                account_key BLOB NOT NULL
            ) WITHOUT ROWID""",
            "CREATE INDEX account_identities_by_account ON account_identities (account_key)",
            "CREATE TABLE account_version (id INTEGER PRIMARY KEY, version INTEGER NOT NULL)",
            "INSERT INTO account_version (id, version) VALUES (1, 0)",
            # Per-account token buckets kept in the database (full_at as in
            # key_package_claims): invitations to strangers.
            """CREATE TABLE account_limits (
                bucket_key BLOB PRIMARY KEY,
                full_at REAL NOT NULL
            ) WITHOUT ROWID""",
            "CREATE INDEX account_limits_by_time ON account_limits (full_at)",
            # Every identity that registered a name before accounts existed is one.
            "INSERT INTO accounts (account_key, status, created_at_ms, changed_at_ms) "
            "SELECT identity_key, 'active', CAST(strftime('%s', 'now') AS INTEGER) * 1000, "
            "CAST(strftime('%s', 'now') AS INTEGER) * 1000 FROM usernames",
            "INSERT INTO account_identities (identity_key, account_key) "
            "SELECT identity_key, identity_key FROM usernames",
            # The account a payload's bytes are charged to (queued_bytes is now
            # per account); rows stored before are their sender's.
            "ALTER TABLE payloads ADD COLUMN account BLOB",
            "DROP TRIGGER payloads_release_quota",
            """CREATE TRIGGER payloads_release_quota AFTER DELETE ON payloads
            WHEN OLD.gap = 0
            BEGIN
                UPDATE queued_bytes SET bytes = bytes - length(OLD.payload)
                WHERE sender = coalesce(OLD.account, OLD.sender);
                DELETE FROM queued_bytes
                WHERE sender = coalesce(OLD.account, OLD.sender) AND bytes <= 0;
            END""",
        ),
        postgres=(
            """CREATE TABLE invites (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                code_hash BYTEA NOT NULL UNIQUE,
                max_uses BIGINT NOT NULL,
                used BIGINT NOT NULL DEFAULT 0,
                note TEXT NOT NULL DEFAULT '',
                created_at_ms BIGINT NOT NULL,
                expires_at_ms BIGINT,
                revoked_at_ms BIGINT
            )""",
            """CREATE TABLE accounts (
                account_key BYTEA PRIMARY KEY,
                status TEXT NOT NULL,
                reason TEXT NOT NULL DEFAULT '',
                created_at_ms BIGINT NOT NULL,
                changed_at_ms BIGINT NOT NULL,
                invite_id BIGINT,
                status_version BIGINT NOT NULL DEFAULT 0
            )""",
            "CREATE INDEX accounts_by_version ON accounts (status_version)",
            """CREATE TABLE account_identities (
                identity_key BYTEA PRIMARY KEY,
                account_key BYTEA NOT NULL
            )""",
            "CREATE INDEX account_identities_by_account ON account_identities (account_key)",
            "CREATE TABLE account_version (id INTEGER PRIMARY KEY, version BIGINT NOT NULL)",
            "INSERT INTO account_version (id, version) VALUES (1, 0)",
            """CREATE TABLE account_limits (
                bucket_key BYTEA PRIMARY KEY,
                full_at DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX account_limits_by_time ON account_limits (full_at)",
            "INSERT INTO accounts (account_key, status, created_at_ms, changed_at_ms) "
            "SELECT identity_key, 'active', (extract(epoch FROM now()) * 1000)::bigint, "
            "(extract(epoch FROM now()) * 1000)::bigint FROM usernames",
            "INSERT INTO account_identities (identity_key, account_key) "
            "SELECT identity_key, identity_key FROM usernames",
            "ALTER TABLE payloads ADD COLUMN account BYTEA",
            """CREATE OR REPLACE FUNCTION payloads_release_quota() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                UPDATE queued_bytes SET bytes = bytes - length(OLD.payload)
                WHERE sender = coalesce(OLD.account, OLD.sender);
                DELETE FROM queued_bytes
                WHERE sender = coalesce(OLD.account, OLD.sender) AND bytes <= 0;
                RETURN NULL;
            END $$""",
        ),
    ),
    Migration(
        13,
        "devices: certificates, names and revocation of an account's identities; link mailboxes",
        sqlite=(
            # Devices (docs/protocol.md, "Devices"): a linked device's row
            # keeps the certificate its account key signed; the account's own
            # key (its first device) has none. A revoked device never
            # authenticates again; revoked_version is the account_version
            # value of its revocation, which nodes poll to close its connections.
            "ALTER TABLE account_identities ADD COLUMN device_name TEXT",
            "ALTER TABLE account_identities ADD COLUMN certificate BLOB",
            "ALTER TABLE account_identities ADD COLUMN issued_at_ms INTEGER",
            "ALTER TABLE account_identities ADD COLUMN revoked_at_ms INTEGER",
            "ALTER TABLE account_identities ADD COLUMN revoked_version INTEGER",
            "CREATE INDEX account_identities_by_revocation ON account_identities (revoked_version)",
            # A link mailbox, named by the SHA-256 of a link code: the new
            # device's request and, once a device of the account approved
            # it, the answer (both end-to-end encrypted or authenticated by
            # the code, which the server never sees).
            """CREATE TABLE link_mailboxes (
                mailbox BLOB PRIMARY KEY,
                account_key BLOB NOT NULL,
                device_key BLOB NOT NULL,
                request BLOB NOT NULL,
                answer BLOB,
                answered_by BLOB,
                created_at_ms INTEGER NOT NULL,
                expires_at_ms INTEGER NOT NULL
            )""",
            "CREATE INDEX link_mailboxes_by_expiry ON link_mailboxes (expires_at_ms)",
        ),
        postgres=(
            # Devices (docs/protocol.md, "Devices"): a linked device's row
            # keeps the certificate its account key signed; the account's own
            # key (its first device) has none. A revoked device never
            # authenticates again; revoked_version is the account_version
            # value of its revocation, which nodes poll to close its connections.
            "ALTER TABLE account_identities ADD COLUMN device_name TEXT",
            "ALTER TABLE account_identities ADD COLUMN certificate BYTEA",
            "ALTER TABLE account_identities ADD COLUMN issued_at_ms BIGINT",
            "ALTER TABLE account_identities ADD COLUMN revoked_at_ms BIGINT",
            "ALTER TABLE account_identities ADD COLUMN revoked_version BIGINT",
            "CREATE INDEX account_identities_by_revocation ON account_identities (revoked_version)",
            # A link mailbox, named by the SHA-256 of a link code: the new
            # device's request and, once a device of the account approved
            # it, the answer (both end-to-end encrypted or authenticated by
            # the code, which the server never sees).
            """CREATE TABLE link_mailboxes (
                mailbox BYTEA PRIMARY KEY,
                account_key BYTEA NOT NULL,
                device_key BYTEA NOT NULL,
                request BYTEA NOT NULL,
                answer BYTEA,
                answered_by BYTEA,
                created_at_ms BIGINT NOT NULL,
                expires_at_ms BIGINT NOT NULL
            )""",
            "CREATE INDEX link_mailboxes_by_expiry ON link_mailboxes (expires_at_ms)",
        ),
    ),
)

#: (version, description, statements) for the SQLCipher backend.
MIGRATIONS: tuple[Version, ...] = tuple((m.version, m.description, m.sqlite) for m in SCHEMA)
#: (version, description, statements) for the PostgreSQL backend.
POSTGRES_MIGRATIONS: tuple[Version, ...] = tuple(
    (m.version, m.description, m.postgres) for m in SCHEMA
)

#: The table of applied versions, in each dialect.
_VERSIONS_TABLE = {
    "sqlite": "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
    "description TEXT NOT NULL, applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)",
    "postgresql": "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
    "description TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
}
#: Serializes the migrations of PostgreSQL nodes starting at once (an arbitrary key).
_MIGRATION_LOCK = 0x717071


def _take_turns(txn: Txn) -> None:
    if txn.engine.arrays:
        txn.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))


def migrate(
    transaction: Callable[[], AbstractContextManager[Txn]],
    migrations: tuple[Version, ...],
) -> None:
    """Apply each of ``migrations`` above the stored version, one ``transaction()`` each.

    Raises:
        StorageError: the database's schema is newer than the last of ``migrations``.
    """
    latest = migrations[-1][0]
    with transaction() as txn:
        _take_turns(txn)
        txn.execute(_VERSIONS_TABLE[txn.engine.name])
    for version, description, statements in migrations:
        with transaction() as txn:
            _take_turns(txn)
            current = int(txn.value("SELECT coalesce(max(version), 0) FROM schema_migrations"))
            if current > latest:
                raise StorageError(
                    f"database schema version {current} is newer than this server ({latest})"
                )
            if version <= current:
                continue
            for statement in statements:
                if isinstance(statement, str):
                    txn.execute(statement)
                else:
                    statement(txn)
            txn.execute(
                "INSERT INTO schema_migrations (version, description) VALUES (?, ?)",
                (version, description),
            )
