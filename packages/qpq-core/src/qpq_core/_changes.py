"""Change sets: the storage rows an MLS operation changed.

Every mutating :class:`qpq_core.MlsClient` call returns a frozen result whose
``changes`` the host persists in one transaction, together with its own rows
(docs/mls.md, "What the host persists").
"""

from __future__ import annotations

from collections.abc import MutableMapping

__all__ = ["ChangeSet", "apply_changes"]

#: Storage key -> new value, or ``None`` to delete. Persist atomically.
ChangeSet = tuple[tuple[bytes, bytes | None], ...]


def apply_changes(rows: MutableMapping[bytes, bytes], changes: ChangeSet) -> None:
    """Apply a change set to an in-memory table (tests, simple hosts)."""
    for key, value in changes:
        if value is None:
            rows.pop(key, None)
        else:
            rows[key] = value
