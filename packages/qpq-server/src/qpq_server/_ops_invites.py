"""Invite codes, written once for both engines: made, listed, revoked, used.

A code is stored as its SHA-256 (:func:`qpq_server._accounts.invite_hash`)
with how many registrations it admits, when it expires and a note; a
registration uses it (:func:`use_invite`) in the transaction that creates
the account, under the code's row lock, so two registrations through two
nodes cannot both take its last use.
"""

from __future__ import annotations

from typing import Any

from qpq_proto.errors import ForbiddenError, NotFoundError
from qpq_server._accounts import InviteRecord
from qpq_server._engine import Txn

__all__ = ["create_invite", "list_invites", "revoke_invite", "use_invite"]

_COLUMNS = "id, max_uses, used, note, created_at_ms, expires_at_ms, revoked_at_ms"


def _invite(row: tuple[Any, ...]) -> InviteRecord:
    return InviteRecord(
        id=int(row[0]),
        max_uses=int(row[1]),
        used=int(row[2]),
        note=str(row[3]),
        created_at_ms=int(row[4]),
        expires_at_ms=None if row[5] is None else int(row[5]),
        revoked_at_ms=None if row[6] is None else int(row[6]),
    )


def create_invite(
    txn: Txn,
    code_hash: bytes,
    *,
    max_uses: int,
    expires_at_ms: int | None,
    note: str,
    now_ms: int,
) -> InviteRecord:
    row = txn.one(
        "INSERT INTO invites (code_hash, max_uses, note, created_at_ms, expires_at_ms) "  # noqa: S608 - constant columns
        f"VALUES (?, ?, ?, ?, ?) RETURNING {_COLUMNS}",
        (code_hash, max_uses, note, now_ms, expires_at_ms),
    )
    if row is None:  # RETURNING always gives the row it inserted
        raise NotFoundError("the invite was not stored")
    return _invite(row)


def list_invites(txn: Txn) -> list[InviteRecord]:
    return [
        _invite(row)
        for row in txn.all(f"SELECT {_COLUMNS} FROM invites ORDER BY id")  # noqa: S608 - constant
    ]


def revoke_invite(
    txn: Txn, *, code_hash: bytes | None = None, invite_id: int | None = None, now_ms: int
) -> InviteRecord:
    """Revoke one code, named by itself (its hash) or by its id; NotFoundError if none.

    Revoking it again keeps the first time.
    """
    where, key = ("code_hash = ?", code_hash) if code_hash is not None else ("id = ?", invite_id)
    row = txn.one(
        f"UPDATE invites SET revoked_at_ms = coalesce(revoked_at_ms, ?) WHERE {where} "  # noqa: S608 - constant
        f"RETURNING {_COLUMNS}",
        (now_ms, key),
    )
    if row is None:
        raise NotFoundError("no such invite code", field="invite")
    return _invite(row)


def use_invite(txn: Txn, code_hash: bytes, now_ms: int) -> int:
    """Take one use of the code for a new account: its id.

    Raises:
        ForbiddenError: no such code, or it was revoked, has expired or is used up.
    """
    row = txn.one(
        f"SELECT {_COLUMNS} FROM invites WHERE code_hash = ? FOR UPDATE",  # noqa: S608 - constant
        (code_hash,),
    )
    if row is None:
        raise ForbiddenError("this invite code is not valid on this server", field="invite")
    invite = _invite(row)
    state = invite.state(now_ms)
    if state == "revoked":
        raise ForbiddenError("this invite code was revoked by the operator", field="invite")
    if state == "expired":
        raise ForbiddenError("this invite code has expired", field="invite")
    if state == "used up":
        used = "was already used" if invite.max_uses == 1 else "was used up"
        raise ForbiddenError(f"this invite code {used}", field="invite")
    txn.execute("UPDATE invites SET used = used + 1 WHERE id = ?", (invite.id,))
    return invite.id
