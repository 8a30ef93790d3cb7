"""An account's devices and link mailboxes, written once for both engines.

A device is a row of ``account_identities`` (docs/protocol.md, "Devices"):
the account's own key is its first device (no certificate); a linked
device's row keeps the certificate the account key signed for it, which
the handler verified before :func:`register_device` stores it. Revoking a
device (:func:`revoke_device`) marks its row, moves the ``account_version``
counter so that every node closes its connections (``status_changes``
reports it as revoked), drops its KeyPackages and queue, and takes it off
every group's recipients; its leaves stay in the groups' MLS state until a
device of the account commits their removal, and no commit may add it again.

A link mailbox holds one link request of a new device (:func:`post_link_request`)
until it expires; a device of the account the request names reads it
(:func:`read_link_request`) and answers it once (:func:`answer_link`); the
new device reads the answer (:func:`take_link_answer`), which empties it.
"""

from __future__ import annotations

from dataclasses import dataclass

from qpq_proto.errors import AlreadyExistsError, ForbiddenError, NotFoundError, RateLimitedError
from qpq_server._accounts import Status
from qpq_server._engine import Txn
from qpq_server._ops_account_limits import take_account_tokens
from qpq_server._ops_usernames import resolve_username

__all__ = [
    "NO_REQUEST",
    "OTHER_ACCOUNT",
    "DeviceRecord",
    "LinkRequest",
    "answer_link",
    "list_devices",
    "post_link_request",
    "read_link_request",
    "register_device",
    "revoke_device",
    "revoked_among",
    "take_link_answer",
]


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """One current device of an account; ``certificate`` is empty for the account key."""

    device_key: bytes
    name: str
    certificate: bytes
    issued_at_ms: int


@dataclass(frozen=True, slots=True)
class LinkRequest:
    """A new device's link request, as its mailbox holds it."""

    device_key: bytes
    request: bytes


def _active_account(txn: Txn, account_key: bytes) -> None:
    row = txn.one("SELECT status FROM accounts WHERE account_key = ?", (account_key,))
    if row is None or Status(str(row[0])) is not Status.ACTIVE:
        raise ForbiddenError("the certificate names no active account on this server")


def register_device(
    txn: Txn,
    device_key: bytes,
    account_key: bytes,
    *,
    name: str,
    certificate: bytes,
    issued_at_ms: int,
) -> None:
    """Record ``device_key`` as a device of ``account_key`` (its certificate verified).

    Registering again with a newer certificate of the same account replaces
    it. Refused (ForbiddenError) when the account is not active, the key
    acts for another account, or it was revoked.
    """
    _active_account(txn, account_key)
    row = txn.one(
        "SELECT account_key, revoked_at_ms FROM account_identities WHERE identity_key = ?",
        (device_key,),
    )
    if row is not None:
        if bytes(row[0]) != account_key:
            raise ForbiddenError("this key already acts for another account")
        if row[1] is not None:
            raise ForbiddenError("this device was removed from its account; link a new one")
        txn.execute(
            "UPDATE account_identities SET device_name = ?, certificate = ?, issued_at_ms = ? "
            "WHERE identity_key = ?",
            (name, certificate, issued_at_ms, device_key),
        )
        return
    txn.execute(
        "INSERT INTO account_identities (identity_key, account_key, device_name, certificate, "
        "issued_at_ms) VALUES (?, ?, ?, ?, ?)",
        (device_key, account_key, name, certificate, issued_at_ms),
    )


def list_devices(txn: Txn, account_key: bytes) -> list[DeviceRecord]:
    """The current (unrevoked) devices of an active account, first registered first."""
    row = txn.one("SELECT status FROM accounts WHERE account_key = ?", (account_key,))
    if row is None or Status(str(row[0])) is not Status.ACTIVE:
        raise NotFoundError("no such account", field="account_key")
    return [
        DeviceRecord(
            device_key=bytes(key),
            name="" if name is None else str(name),
            certificate=b"" if cert is None else bytes(cert),
            issued_at_ms=0 if issued is None else int(issued),
        )
        for key, name, cert, issued in txn.all(
            "SELECT identity_key, device_name, certificate, issued_at_ms "
            "FROM account_identities WHERE account_key = ? AND revoked_at_ms IS NULL "
            "ORDER BY coalesce(issued_at_ms, 0), identity_key",
            (account_key,),
        )
    ]


def revoke_device(txn: Txn, account_key: bytes, device_key: bytes, *, now_ms: int) -> None:
    """Revoke ``device_key``, a device of ``account_key`` (see the module docstring)."""
    row = txn.one(
        "SELECT revoked_at_ms FROM account_identities WHERE identity_key = ? AND account_key = ?",
        (device_key, account_key),
    )
    if row is None or row[0] is not None:
        raise NotFoundError("the account has no such device", field="device_key")
    # The account's row, then the counter, in the order a status change takes them.
    txn.lock_rows("SELECT 1 FROM accounts WHERE account_key = ?", (account_key,))
    version = int(
        txn.value("UPDATE account_version SET version = version + 1 WHERE id = 1 RETURNING version")
    )
    txn.execute(
        "UPDATE account_identities SET revoked_at_ms = ?, revoked_version = ? "
        "WHERE identity_key = ?",
        (now_ms, version, device_key),
    )
    txn.lock_rows("SELECT 1 FROM queues WHERE recipient = ?", (device_key,))
    txn.execute("DELETE FROM deliveries WHERE recipient = ?", (device_key,))
    txn.execute("UPDATE queues SET depth = 0 WHERE recipient = ?", (device_key,))
    for table in ("key_packages", "last_resort", "endpoints", "group_members"):
        txn.execute(f"DELETE FROM {table} WHERE identity_key = ?", (device_key,))  # noqa: S608 - fixed names


def revoked_among(txn: Txn, identity_keys: tuple[bytes, ...]) -> set[bytes]:
    """Those of ``identity_keys`` that are revoked devices."""
    found: set[bytes] = set()
    for where, params in txn.in_list("identity_key", identity_keys):
        found.update(
            bytes(row[0])
            for row in txn.all(
                "SELECT identity_key FROM account_identities "  # noqa: S608 - in_list
                f"WHERE {where} AND revoked_at_ms IS NOT NULL",
                params,
            )
        )
    return found


def post_link_request(
    txn: Txn,
    mailbox: bytes,
    *,
    username: str,
    device_key: bytes,
    request: bytes,
    now_ms: int,
    expires_at_ms: int,
) -> None:
    """Open a mailbox with a new device's request to join the account of
    ``username`` (NotFoundError: none; AlreadyExistsError: the mailbox is taken).

    Whether a name is taken is no secret from a key without an account
    (RegisterUser answers it too); the per-identity and per-address rate
    limits bound how fast anyone asks.
    """
    named = resolve_username(txn, username)
    if named is None:
        raise NotFoundError("no such user", field="username")
    row = txn.one("SELECT account_key FROM account_identities WHERE identity_key = ?", (named,))
    account_key = named if row is None else bytes(row[0])
    _active_account(txn, account_key)
    # Expired mailboxes go as new ones come: the table holds one window's requests.
    txn.execute("DELETE FROM link_mailboxes WHERE expires_at_ms <= ?", (now_ms,))
    if txn.one("SELECT 1 FROM link_mailboxes WHERE mailbox = ?", (mailbox,)) is not None:
        raise AlreadyExistsError("this link code is in use; make another", field="mailbox")
    txn.execute(
        "INSERT INTO link_mailboxes (mailbox, account_key, device_key, request, created_at_ms, "
        "expires_at_ms) VALUES (?, ?, ?, ?, ?, ?)",
        (mailbox, account_key, device_key, request, now_ms, expires_at_ms),
    )


_EXPIRED = "no link request under this code: it was never made, expired or was used"
#: Why :func:`read_link_request` gives no request: none, or another account's.
NO_REQUEST = _EXPIRED
OTHER_ACCOUNT = "this link code was made for another account"


def _open_mailbox(txn: Txn, mailbox: bytes, now_ms: int) -> tuple[bytes, bytes, bytes, bool]:
    row = txn.one(
        "SELECT account_key, device_key, request, answer FROM link_mailboxes "
        "WHERE mailbox = ? AND expires_at_ms > ?",
        (mailbox, now_ms),
    )
    if row is None:
        raise NotFoundError(_EXPIRED, field="mailbox")
    return bytes(row[0]), bytes(row[1]), bytes(row[2]), row[3] is not None


def read_link_request(
    txn: Txn, mailbox: bytes, account_key: bytes, *, now_ms: int, tries_per_hour: float
) -> LinkRequest | str:
    """The request in ``mailbox`` for a device of ``account_key``, or why not.

    Every try costs the account one of ``tries_per_hour`` (a guess that
    finds nothing too: codes are guessed by trying them), taken in this
    transaction, which commits whatever the answer (RateLimitedError: none
    left). Why not: the request asks to join another account, or there is
    none (never made, expired, or answered: a code is single-use).
    """
    if not take_account_tokens(
        txn,
        b"L" + account_key,
        1.0,
        now=now_ms / 1000,
        rate=tries_per_hour / 3600,
        capacity=tries_per_hour,
    ):
        raise RateLimitedError("too many link codes tried lately; try again later", field="mailbox")
    try:
        wanted, device, request, answered = _open_mailbox(txn, mailbox, now_ms)
    except NotFoundError:
        return _EXPIRED
    if wanted != account_key:
        return OTHER_ACCOUNT
    if answered:
        return _EXPIRED
    return LinkRequest(device_key=device, request=request)


def answer_link(
    txn: Txn, mailbox: bytes, account_key: bytes, approver: bytes, answer: bytes, *, now_ms: int
) -> None:
    """Store the answer of a device of ``account_key``, once."""
    wanted, _device, _request, answered = _open_mailbox(txn, mailbox, now_ms)
    if wanted != account_key:
        raise ForbiddenError(OTHER_ACCOUNT)
    if answered:
        raise NotFoundError(_EXPIRED, field="mailbox")
    txn.execute(
        "UPDATE link_mailboxes SET answer = ?, answered_by = ? WHERE mailbox = ?",
        (answer, approver, mailbox),
    )


def take_link_answer(txn: Txn, mailbox: bytes, device_key: bytes, *, now_ms: int) -> bytes:
    """The answer for the device that posted the request (empty: not yet); taking it
    empties the mailbox."""
    _account, device, _request, answered = _open_mailbox(txn, mailbox, now_ms)
    if device != device_key:
        raise ForbiddenError("this link request was made by another device")
    if not answered:
        return b""
    answer = bytes(txn.value("SELECT answer FROM link_mailboxes WHERE mailbox = ?", (mailbox,)))
    txn.execute("DELETE FROM link_mailboxes WHERE mailbox = ?", (mailbox,))
    return answer
