"""The schema of the profile database and its migrations.

Each migration runs in one transaction when a profile is opened; append new
ones, never edit one that has shipped.
"""

from __future__ import annotations

__all__ = ["MIGRATIONS", "SCHEMA_VERSION"]

_SCHEMA_1 = """
CREATE TABLE identity (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seed BLOB NOT NULL,
    username TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE mls_kv (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE groups (
    group_id BLOB PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    named INTEGER NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE history (
    id INTEGER PRIMARY KEY,
    group_id BLOB NOT NULL,
    kind TEXT NOT NULL,
    sender BLOB,
    body TEXT NOT NULL,
    sent_at INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    seq INTEGER UNIQUE,
    shown INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX history_by_group ON history (group_id, id);
CREATE INDEX history_unshown ON history (shown, id);
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    group_id BLOB NOT NULL,
    epoch INTEGER NOT NULL,
    payload BLOB NOT NULL,
    recipients BLOB NOT NULL,
    welcome BLOB,
    new_members BLOB,
    state TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE cursor (id INTEGER PRIMARY KEY CHECK (id = 1), processed_seq INTEGER NOT NULL);
INSERT INTO cursor (id, processed_seq) VALUES (1, 0);
CREATE TABLE contacts (identity_key BLOB PRIMARY KEY, username TEXT NOT NULL) WITHOUT ROWID;
"""

# The server verifies commits and fans out by its roster: a commit carries
# the GroupInfo of the epoch it creates (and the server routes its Welcome),
# nothing names recipients any more; a group whose messages the server
# could not queue for us is rejoined.
_SCHEMA_2 = """
ALTER TABLE outbox ADD COLUMN group_info BLOB;
ALTER TABLE outbox DROP COLUMN recipients;
ALTER TABLE outbox DROP COLUMN new_members;
ALTER TABLE groups ADD COLUMN needs_rejoin INTEGER NOT NULL DEFAULT 0;
"""

# Trust: the key pinned for each username we met (TOFU), verified or with a
# changed key awaiting the user's decision; who counts as a contact and who
# is blocked; invitations held as requests and the messages of their groups
# held until the decision; the highest seq the server confirmed deleting,
# which tells a server that lost its queue from a redelivery. Every name and
# key known so far was looked up by us or met in a group we are in: they
# are contacts, and their names are pinned to the keys we have.
_SCHEMA_3 = """
ALTER TABLE cursor ADD COLUMN acked_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE contacts ADD COLUMN contact INTEGER NOT NULL DEFAULT 1;
ALTER TABLE contacts ADD COLUMN blocked INTEGER NOT NULL DEFAULT 0;
CREATE TABLE pins (
    name_key TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    identity_key BLOB NOT NULL,
    verified INTEGER NOT NULL DEFAULT 0,
    changed_key BLOB
) WITHOUT ROWID;
INSERT OR IGNORE INTO pins (name_key, username, identity_key)
    SELECT qpq_username_key(username), username, identity_key FROM contacts;
CREATE TABLE requests (
    group_id BLOB PRIMARY KEY,
    inviter BLOB NOT NULL,
    welcome BLOB NOT NULL,
    received_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE held (
    id INTEGER PRIMARY KEY,
    group_id BLOB NOT NULL,
    seq INTEGER NOT NULL,
    sender BLOB NOT NULL,
    payload BLOB NOT NULL,
    enqueued_at_ms INTEGER NOT NULL,
    gap_group_id BLOB NOT NULL
);
CREATE INDEX held_by_group ON held (group_id, id);
"""

# Direct delivery: an application message can arrive from a peer and again
# through the server (the same MLS bytes): the digest of each one processed
# is kept (longer than the server keeps messages) so the second copy is
# skipped before MLS sees it. A text's id, from its sender, shows a message
# that was encrypted twice (sent again after a failure) once.
_SCHEMA_4 = """
CREATE TABLE seen (digest BLOB PRIMARY KEY, received_at INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX seen_by_age ON seen (received_at);
ALTER TABLE history ADD COLUMN message_id TEXT;
CREATE UNIQUE INDEX history_message_id ON history (group_id, sender, message_id);
"""

# Group integrity against hostile members and a lying server (docs/security.md):
# - a group whose served GroupInfo differs from our own view of an epoch
#   (wrong_group_info: that epoch; settle replaces it), and one joined below
#   the epoch the server served (confirm_epoch: caught up, we must have
#   reached it, else we rejoin);
# - an ended membership kept apart when the group id is joined again: its
#   row and history move to a random local key (archived_from: the MLS
#   group id it was), so nothing of it carries over to the new entry;
# - the last epoch held in each group id we left or were removed from (a
#   Welcome at or below it is refused; 0 for groups that ended before this
#   was recorded), and the digests of the Welcomes processed (a Welcome is
#   processed once);
# - direct messages shown before the server confirmed their sender
#   (history.direct: 'unconfirmed', then NULL or 'withdrawn').
_SCHEMA_5 = """
ALTER TABLE groups ADD COLUMN wrong_group_info INTEGER;
ALTER TABLE groups ADD COLUMN confirm_epoch INTEGER;
ALTER TABLE groups ADD COLUMN archived_from BLOB;
CREATE TABLE ended_groups (
    group_id BLOB PRIMARY KEY,
    last_epoch INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO ended_groups (group_id, last_epoch)
    SELECT group_id, 0 FROM groups WHERE state IN ('left', 'removed');
CREATE TABLE welcomes (digest BLOB PRIMARY KEY, received_at INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX welcomes_by_age ON welcomes (received_at);
ALTER TABLE history ADD COLUMN direct TEXT;
CREATE INDEX history_direct ON history (direct) WHERE direct IS NOT NULL;
"""

# Bounds: what an invitation not yet accepted may hold is capped, and what
# was not held is counted for the user (_request_bounds); each processed
# message's digest keeps the seq it came with (NULL: it came directly), so
# the digests of what the server has deleted can go (the client README,
# "Every table, and what bounds it").
_SCHEMA_6 = """
ALTER TABLE requests ADD COLUMN dropped INTEGER NOT NULL DEFAULT 0;
ALTER TABLE seen ADD COLUMN seq INTEGER;
"""

# Accounts: an identity whose account the server said was deleted (a
# deletion notice); settle commits the removal of its leaves from every
# group it is still in.
_SCHEMA_7 = """
ALTER TABLE contacts ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
"""

# Devices: a linked device keeps the certificate its account key signed for
# it (its leaves' credential) and the account key's seed it was handed when
# linked; a profile made by `qpq init` has neither (its key is its account's).
_SCHEMA_8 = """
ALTER TABLE identity ADD COLUMN certificate BLOB;
ALTER TABLE identity ADD COLUMN account_seed BLOB;
"""

#: (version, statements): applied in order, each in one transaction.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (1, _SCHEMA_1),
    (2, _SCHEMA_2),
    (3, _SCHEMA_3),
    (4, _SCHEMA_4),
    (5, _SCHEMA_5),
    (6, _SCHEMA_6),
    (7, _SCHEMA_7),
    (8, _SCHEMA_8),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]
