"""``qpq-server invites`` and ``qpq-server accounts``: the operator's commands.

They work on the server's own database (SQLCipher in ``data_dir``, or the
PostgreSQL of ``database_url``) from the server host, with the settings
``run`` uses (``--config``, ``--data-dir``, the ``QPQ_*`` environment), also
while the server runs: SQLite's WAL lets a second process write between the
server's transactions, and every node notices a suspension or deletion
within seconds (:mod:`qpq_server._account_watch`) and closes the account's
connections. Output is for people; an invite code goes alone on stdout (so
``CODE=$(qpq-server invites create)`` keeps it) and everything else about
it on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import re
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from qpq_proto.errors import ServiceError
from qpq_server._accounts import (
    INVITE_PREFIX,
    AccountRecord,
    InviteRecord,
    Status,
    invite_hash,
    new_invite_code,
)
from qpq_server._config import ServerConfig
from qpq_server._errors import StorageError
from qpq_server._ops_accounts import deletion_notice
from qpq_server._server import open_storage
from qpq_server._storage import Storage

__all__ = ["add_admin_commands", "run_accounts", "run_invites"]

_T = TypeVar("_T")
EXIT_OK = 0
EXIT_FAILURE = 1
#: The longest reason a suspension may give (it is shown to the account's owner).
MAX_REASON_CHARS = 200
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")
_SECONDS_PER = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def add_admin_commands(commands: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``invites`` and ``accounts`` with their subcommands to ``commands``."""
    invites = commands.add_parser("invites", help="make, list and revoke invite codes")
    common(invites)
    verbs = invites.add_subparsers(dest="verb", required=True)
    create = verbs.add_parser("create", help="make an invite code (printed once)")
    create.add_argument("--uses", type=int, default=1, help="registrations it admits (default 1)")
    create.add_argument("--expires", help="valid for this long: 90m, 12h, 7d, 2w (default: never)")
    create.add_argument("--note", default="", help="who it is for (shown by `invites list`)")
    verbs.add_parser("list", help="list every invite code (never the codes themselves)")
    revoke = verbs.add_parser("revoke", help="revoke a code, given as itself or its id")
    revoke.add_argument("code", metavar="CODE", help="the code, or its id as `invites list` shows")

    accounts = commands.add_parser("accounts", help="list, suspend and delete accounts")
    common(accounts)
    verbs = accounts.add_subparsers(dest="verb", required=True)
    verbs.add_parser("list", help="list every account")
    for verb, text in (
        ("show", "show one account and what it holds"),
        ("suspend", "suspend an account: its calls are refused, its connections closed"),
        ("unsuspend", "make a suspended account active again"),
        ("delete", "delete an account: its data goes, its groups are told"),
    ):
        sub = verbs.add_parser(verb, help=text)
        sub.add_argument("name", metavar="NAME", help="the account's username")
        if verb == "suspend":
            sub.add_argument("--reason", default="", help="shown to its owner on every refusal")
        if verb == "delete":
            sub.add_argument("--yes", action="store_true", help="do not ask to type NAME")


class _Refused(Exception):
    """A one-line failure of an operator command (exit status 1)."""


def _fail(message: str) -> int:
    print(f"qpq-server: error: {message}", file=sys.stderr)
    return EXIT_FAILURE


def _with_storage(config: ServerConfig, work: Callable[[Storage], Awaitable[_T]]) -> _T:
    async def run() -> _T:
        storage = await open_storage(config)
        try:
            return await work(storage)
        finally:
            await storage.close()

    return asyncio.run(run())


def _run(config: ServerConfig, work: Callable[[Storage], Awaitable[int]]) -> int:
    try:
        return _with_storage(config, work)
    except (_Refused, ServiceError) as error:
        return _fail(error.message if isinstance(error, ServiceError) else str(error))
    except StorageError as error:
        return _fail(str(error))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _when(ms: int | None) -> str:
    if ms is None:
        return "never"
    moment = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def parse_duration(text: str) -> float:
    """``90m``, ``12h``, ``7d``, ``2w`` or seconds as seconds; ValueError otherwise."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None or float(match[1]) <= 0:
        raise ValueError(f"--expires: expected a duration such as 12h or 7d, got {text!r}")
    return float(match[1]) * _SECONDS_PER[match[2]]


# ---- invites ----------------------------------------------------------------


def _invite_line(invite: InviteRecord, now_ms: int) -> str:
    note = f"  {invite.note}" if invite.note else ""
    return (
        f"#{invite.id}  {invite.state(now_ms):<8}  used {invite.used}/{invite.max_uses}  "
        f"made {_when(invite.created_at_ms)}  expires {_when(invite.expires_at_ms)}{note}"
    )


def run_invites(args: argparse.Namespace, config: ServerConfig) -> int:
    """``qpq-server invites create|list|revoke``."""
    if args.verb == "create":
        if args.uses < 1:
            return _fail("--uses: must be at least 1")
        try:
            lifetime = None if args.expires is None else parse_duration(args.expires)
        except ValueError as error:
            return _fail(str(error))

        async def create(storage: Storage) -> int:
            code = new_invite_code()
            now_ms = _now_ms()
            expires = None if lifetime is None else now_ms + int(lifetime * 1000)
            invite = await storage.create_invite(
                invite_hash(code), max_uses=args.uses, expires_at_ms=expires, note=args.note,
                now_ms=now_ms,
            )  # fmt: skip
            print(code)
            print(
                f"{_invite_line(invite, now_ms)}\n(the code is shown only now: give it out, "
                "then forget it; `qpq-server invites revoke` takes it or its id)",
                file=sys.stderr,
            )
            return EXIT_OK

        return _run(config, create)
    if args.verb == "list":

        async def listing(storage: Storage) -> int:
            now_ms = _now_ms()
            invites = await storage.list_invites()
            for invite in invites:
                print(_invite_line(invite, now_ms))
            if not invites:
                print("no invite codes yet (qpq-server invites create)")
            return EXIT_OK

        return _run(config, listing)

    async def revoke(storage: Storage) -> int:
        given = args.code.strip().removeprefix("#")
        now_ms = _now_ms()
        if given.isdigit():
            invite = await storage.revoke_invite(invite_id=int(given), now_ms=now_ms)
        else:
            if not given.lower().startswith(INVITE_PREFIX):
                raise _Refused(f"{args.code!r} is neither an invite code nor an invite's id")
            invite = await storage.revoke_invite(code_hash=invite_hash(given), now_ms=now_ms)
        print(f"revoked {_invite_line(invite, now_ms)}")
        return EXIT_OK

    return _run(config, revoke)


# ---- accounts ---------------------------------------------------------------


def _account_line(account: AccountRecord) -> str:
    name = account.username if account.username is not None else "(no name)"
    invite = f"  invite #{account.invite_id}" if account.invite_id is not None else ""
    if account.invite_note:
        invite += f" ({account.invite_note})"
    return (
        f"{name}  {account.status.value}  since {_when(account.created_at_ms)}{invite}  "
        f"key {account.account_key.hex()[:16]}…"
    )


async def _named(storage: Storage, name: str) -> AccountRecord:
    account = await storage.find_account(name)
    if account is None:
        raise _Refused(f"no account is named {name!r} (qpq-server accounts list)")
    return account


def _confirm(name: str) -> bool:
    print(f"delete the account {name!r}? type its name to confirm: ", end="", file=sys.stderr)
    sys.stderr.flush()
    typed = sys.stdin.readline()
    return typed.strip() == name


def run_accounts(args: argparse.Namespace, config: ServerConfig) -> int:
    """``qpq-server accounts list|show|suspend|unsuspend|delete``."""
    if args.verb == "list":

        async def listing(storage: Storage) -> int:
            accounts = await storage.list_accounts()
            for account in accounts:
                print(_account_line(account))
            if not accounts:
                print("no accounts yet")
            return EXIT_OK

        return _run(config, listing)
    if args.verb == "show":

        async def show(storage: Storage) -> int:
            account = await _named(storage, args.name)
            usage = await storage.account_usage(account.account_key)
            invite = "none (registered before invites, or in open mode)"
            if account.invite_id is not None:
                invite = f"#{account.invite_id}" + (
                    f" ({account.invite_note})" if account.invite_note else ""
                )
            reason = f" ({account.reason})" if account.reason else ""
            print(
                f"name       {account.username}\n"
                f"key        {account.account_key.hex()}\n"
                f"status     {account.status.value}{reason} since {_when(account.changed_at_ms)}\n"
                f"created    {_when(account.created_at_ms)}\n"
                f"invite     {invite}\n"
                f"groups     member of {usage.groups}, created {usage.groups_created}\n"
                f"queued     {usage.queued_messages} messages for it; {usage.queued_bytes} "
                "bytes of its own waiting for recipients\n"
                f"keys       {usage.key_packages} KeyPackages"
            )
            return EXIT_OK

        return _run(config, show)
    if args.verb in ("suspend", "unsuspend"):
        reason = getattr(args, "reason", "") or ""
        if len(reason) > MAX_REASON_CHARS or any(ord(c) < 32 for c in reason):
            return _fail(f"--reason: at most {MAX_REASON_CHARS} characters on one line")
        status = Status.SUSPENDED if args.verb == "suspend" else Status.ACTIVE

        async def change(storage: Storage) -> int:
            account = await _named(storage, args.name)
            if account.status is status:
                print(f"{args.name} is {status.value} already")
                return EXIT_OK
            done = await storage.set_account_status(
                account.account_key, status, reason=reason, now_ms=_now_ms()
            )
            print(f"{args.name} is {done.status.value}" + (
                "; its connections close within seconds" if status is Status.SUSPENDED else ""
            ))  # fmt: skip
            return EXIT_OK

        return _run(config, change)

    async def delete(storage: Storage) -> int:
        account = await _named(storage, args.name)
        if not args.yes and not _confirm(args.name):
            raise _Refused(f"not deleted: the name typed was not {args.name!r}")
        now_ms = _now_ms()
        limits = config.limits
        deleted = await storage.delete_account(
            account.account_key,
            now_ms=now_ms,
            reason="deleted by the operator",
            notice=deletion_notice(
                account.account_key, now_ms, limits.message_ttl_seconds * 1000, limits.queue_depth
            ),
        )
        print(
            f"deleted {args.name}: it left {len(deleted.groups)} groups, whose members remove "
            "it with their next change; the name is held for its cooldown"
        )
        return EXIT_OK

    return _run(config, delete)
