"""The state store's people: the usernames the server gave for identity keys
(contacts, blocks), and the keys pinned for usernames on first use."""

from __future__ import annotations

from collections.abc import Iterable

from qpq_client._rows import PersonRow, PinRow, username_key
from qpq_client._state_base import Reader, Writer

__all__ = ["PeopleReads", "PeopleWrites"]


class PeopleWrites(Writer):
    """Known identities (contact, blocked) and pinned keys."""

    def put_contact(self, identity_key: bytes, username: str, *, contact: bool = False) -> None:
        """Remember the username the server gave for a key; ``contact`` makes it a contact."""
        self._cursor.execute(
            "INSERT INTO contacts (identity_key, username, contact, blocked) VALUES (?, ?, ?, 0)"
            " ON CONFLICT (identity_key) DO UPDATE SET username = excluded.username,"
            " contact = max(contact, excluded.contact)",
            (identity_key, username, int(contact)),
        )

    def mark_contacts(self, identity_keys: Iterable[bytes]) -> None:
        """Make known identities contacts (we share a group with them)."""
        self._cursor.executemany(
            "UPDATE contacts SET contact = 1 WHERE identity_key = ?", [(k,) for k in identity_keys]
        )

    def set_blocked(self, identity_key: bytes, username: str, blocked: bool) -> None:
        self._cursor.execute(
            "INSERT INTO contacts (identity_key, username, contact, blocked) VALUES (?, ?, 0, ?)"
            " ON CONFLICT (identity_key) DO UPDATE SET blocked = excluded.blocked",
            (identity_key, username, int(blocked)),
        )

    def pin(self, username: str, identity_key: bytes) -> None:
        """Pin ``identity_key`` for ``username`` (first use, or a change the user accepted)."""
        self._cursor.execute(
            "INSERT OR REPLACE INTO pins (name_key, username, identity_key, verified, changed_key)"
            " VALUES (?, ?, ?, 0, NULL)",
            (username_key(username), username, identity_key),
        )

    def forget_contact(self, username: str, identity_key: bytes) -> None:
        """No longer a contact, nor a pinned key (``qpq contacts remove``); a block stays."""
        self._cursor.execute("DELETE FROM pins WHERE name_key = ?", (username_key(username),))
        self._cursor.execute(
            "UPDATE contacts SET contact = 0 WHERE identity_key = ?", (identity_key,)
        )

    def set_changed_key(self, username: str, changed_key: bytes) -> None:
        self._cursor.execute(
            "UPDATE pins SET changed_key = ? WHERE name_key = ?",
            (changed_key, username_key(username)),
        )

    def set_deleted(self, identity_key: bytes, username: str) -> None:
        """The server said this identity's account was deleted: its leaves are to go."""
        self._cursor.execute(
            "INSERT INTO contacts (identity_key, username, contact, blocked, deleted)"
            " VALUES (?, ?, 0, 0, 1) ON CONFLICT (identity_key) DO UPDATE SET deleted = 1",
            (identity_key, username),
        )

    def rename_person(self, identity_key: bytes, old: str, new: str) -> None:
        """The server now names ``identity_key`` ``new``: the pin of ``old`` (that key)
        moves to the new name, verified or not as it was."""
        self._cursor.execute(
            "UPDATE contacts SET username = ? WHERE identity_key = ?", (new, identity_key)
        )
        self._cursor.execute(
            "UPDATE pins SET name_key = ?, username = ? WHERE name_key = ? AND identity_key = ?",
            (username_key(new), new, username_key(old), identity_key),
        )

    def set_verified(self, username: str, verified: bool) -> None:
        self._cursor.execute(
            "UPDATE pins SET verified = ? WHERE name_key = ?",
            (int(verified), username_key(username)),
        )


class PeopleReads(Reader):
    """Known identities and pinned keys, as rows."""

    def contact(self, identity_key: bytes) -> str | None:
        value = self._one("SELECT username FROM contacts WHERE identity_key = ?", (identity_key,))
        return None if value is None else str(value)

    def person(self, identity_key: bytes) -> PersonRow | None:
        row = self._db.execute(
            "SELECT username, contact, blocked FROM contacts WHERE identity_key = ?",
            (identity_key,),
        ).fetchone()
        return None if row is None else PersonRow(identity_key, row[0], bool(row[1]), bool(row[2]))

    def deleted_people(self) -> set[bytes]:
        """Identities whose account the server said was deleted."""
        return {
            bytes(row[0])
            for row in self._db.execute("SELECT identity_key FROM contacts WHERE deleted = 1")
        }

    def people_named(self, username: str) -> list[PersonRow]:
        """Every identity the server ever gave ``username`` for (compared as usernames are)."""
        key = username_key(username)
        return [
            PersonRow(bytes(k), u, bool(c), bool(b))
            for k, u, c, b in self._db.execute(
                "SELECT identity_key, username, contact, blocked FROM contacts"
            )
            if username_key(u) == key
        ]

    def pin(self, username: str) -> PinRow | None:
        key = username_key(username)
        # Looked up by its key (every message shown names its sender through
        # here); a row filed under a key computed otherwise is still found.
        row = self._db.execute(
            "SELECT username, identity_key, verified, changed_key FROM pins WHERE name_key = ?",
            (key,),
        ).fetchone()
        if row is not None and username_key(row[0]) == key:
            u, k, v, c = row
            return PinRow(u, bytes(k), bool(v), None if c is None else bytes(c))
        return next((p for p in self.pins() if username_key(p.username) == key), None)

    def pins(self) -> list[PinRow]:
        return [
            PinRow(u, bytes(k), bool(v), None if c is None else bytes(c))
            for u, k, v, c in self._db.execute(
                "SELECT username, identity_key, verified, changed_key FROM pins ORDER BY name_key"
            )
        ]
