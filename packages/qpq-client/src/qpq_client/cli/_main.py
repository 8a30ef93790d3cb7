"""The ``qpq`` command line. Every command is a few lines over :class:`qpq_client.Client`:
a method of :mod:`qpq_client.cli._methods`, called through the profile's
``qpq daemon`` when one runs, else in this process."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import platformdirs

from qpq_client._env import (
    ENV_CA_CERT,
    ENV_HOME,
    ENV_INVITE,
    ENV_PIN,
    ENV_SERVER,
    ENV_STATE_KEY,
    ENV_TOKEN,
)
from qpq_client.cli._backup import backup
from qpq_client.cli._daemon_command import daemon, follow_daemon
from qpq_client.cli._errors import EXIT_ERROR, fail
from qpq_client.cli._render import (
    contact_text,
    emit,
    entry_text,
    group_text,
    outbox_text,
    peer_line,
    printable,
    safety_lines,
)
from qpq_client.cli._rpc import INVALID_PARAMS, DaemonGoneError, RpcError
from qpq_client.cli._via_daemon import daemon_link

if TYPE_CHECKING:
    from qpq_client import ServerAddress, Trust
    from qpq_client.cli._local import Connect

__all__ = ["cli", "main"]

_T = TypeVar("_T")
#: The invitation policies (qpq_client.InvitePolicy), named here so that
#: building the command line imports nothing of the library.
_INVITE_POLICIES = ("anyone", "contacts")
#: The ciphersuites' labels (qpq_core.Suite.label), for the same reason.
_SUITES = ("default", "pq")


@dataclass(frozen=True)
class Options:
    """The global options, read once at the edge."""

    home: Path
    server: str | None
    ca_cert: str | None
    pin: str | None
    token: str | None = field(repr=False)  # a secret: never in a repr or a traceback
    as_json: bool
    connect_timeout: float
    #: --p2p / --no-p2p; None: the profile's stored setting (qpq p2p).
    p2p: bool | None = None

    def passphrase(self, *, confirm: bool = False) -> str:
        value = os.environ.get(ENV_STATE_KEY)
        if value:
            return value
        text: str = click.prompt(
            "State passphrase", hide_input=True, confirmation_prompt=confirm, err=True
        )
        return text

    def trust(self) -> Trust | None:
        return self.connection().trust()

    def address(self) -> ServerAddress | None:
        return self.connection().address()

    def connection(self, *, p2p: bool | None = None) -> Connect:
        from qpq_client.cli._local import Connect  # noqa: PLC0415 - off the daemon path

        return Connect(
            server=self.server,
            ca_cert=self.ca_cert,
            pin=self.pin,
            token=self.token,
            connect_timeout=self.connect_timeout,
            p2p=self.p2p if p2p is None else p2p,
        )


def _run(work: Callable[[], Awaitable[_T]]) -> _T:
    from qpq_client.cli._local import run  # noqa: PLC0415 - off the daemon path

    return run(work)


def _call(opts: Options, method: str, params: dict[str, Any] | None = None, **local: Any) -> Any:
    """Run one method: a call to the profile's daemon when one runs, else in this process.

    ``local`` overrides connection options for the in-process path (``p2p``).
    """
    link = daemon_link(opts.home)
    if link is None:
        from qpq_client.cli._local import call_locally  # noqa: PLC0415 - off the daemon path

        return call_locally(
            opts.home, opts.passphrase, opts.connection(**local), method, params or {}
        )
    try:
        return link.call(method, params)
    except RpcError as error:
        if error.code == INVALID_PARAMS:
            raise click.UsageError(error.message) from None
        fail(error.message)
    except DaemonGoneError as error:
        fail(f"{error} (qpq daemon status)")
    except OSError as error:
        fail(f"the daemon could not be reached: {error.strerror or error}")
    finally:
        link.close()


pass_options = click.make_pass_decorator(Options)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    envvar=ENV_HOME,
    type=click.Path(file_okay=False, path_type=Path),
    help=f"Profile directory [${ENV_HOME}; default: the platform's user data dir].",
)
@click.option("--server", envvar=ENV_SERVER, metavar="HOST:PORT", help=f"Server [${ENV_SERVER}].")
@click.option(
    "--ca-cert",
    envvar=ENV_CA_CERT,
    metavar="PEM",
    help=f"CA certificate that issued the server's [${ENV_CA_CERT}].",
)
@click.option(
    "--pin", envvar=ENV_PIN, metavar="SHA256", help=f"Server certificate fingerprint [${ENV_PIN}]."
)
@click.option("--token", envvar=ENV_TOKEN, help=f"Server access token [${ENV_TOKEN}].")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (JSON lines).")
@click.option(
    "--connect-timeout", type=float, default=5.0, show_default=True, help="Seconds to connect."
)
@click.option(
    "--p2p/--no-p2p",
    default=None,
    help="Send directly to members who can be reached, and accept their direct messages"
    " (default: the profile's setting, see `qpq p2p`).",
)
@click.version_option(package_name="qpq-client", prog_name="qpq")
@click.pass_context
def cli(
    ctx: click.Context,
    *,
    home: Path | None,
    server: str | None,
    ca_cert: str | None,
    pin: str | None,
    token: str | None,
    as_json: bool,
    connect_timeout: float,
    p2p: bool | None,
) -> None:
    """qpq: end-to-end encrypted group messaging.

    The passphrase of the local state comes from $QPQ_STATE_KEY or a prompt.
    """
    ctx.obj = Options(
        home=home or Path(platformdirs.user_data_dir("qpq")),
        server=server,
        ca_cert=ca_cert,
        pin=pin,
        token=token,
        as_json=as_json,
        connect_timeout=connect_timeout,
        p2p=p2p,
    )


@cli.command()
@click.option("--username", required=True, help="The name others invite you by.")
@click.option(
    "--invite",
    envvar=ENV_INVITE,
    default="",
    metavar="CODE",
    help=f"The invite code the server's operator gave you [${ENV_INVITE}] (servers that"
    " register people by invitation need one; it is used once and not stored).",
)
@click.option(
    "--weak-passphrase-ok",
    is_flag=True,
    help="Accept a passphrase that is quickly guessed (whoever copies the profile can try).",
)
@pass_options
def init(opts: Options, username: str, invite: str, weak_passphrase_ok: bool) -> None:
    """Create an identity, register USERNAME and upload KeyPackages."""

    async def work() -> dict[str, Any]:
        from qpq_client import Client, Trust  # noqa: PLC0415 - off the daemon path
        from qpq_client.cli._passphrase import passphrase_weakness  # noqa: PLC0415

        address = opts.address()
        if address is None:
            raise click.UsageError(f"init needs --server HOST:PORT (or ${ENV_SERVER})")
        trust = Trust.from_options(opts.ca_cert, opts.pin)
        passphrase = opts.passphrase(confirm=True)
        weakness = None if weak_passphrase_ok else passphrase_weakness(passphrase, username)
        if weakness is not None:
            fail(weakness)
        client = await Client.create(
            opts.home,
            passphrase,
            username,
            server=address,
            trust=trust,
            token=opts.token or "",
            connect_timeout=opts.connect_timeout,
            invite=invite,
        )
        await client.close()
        return {"username": username, "identity_key": client.identity_key.hex()}

    result = _run(work)
    emit(opts.as_json, result, f"registered {username} (identity {result['identity_key'][:16]}…)")


@cli.command()
@pass_options
def whoami(opts: Options) -> None:
    """Show this profile's username, identity key, server and home."""
    data = _call(opts, "whoami")
    emit(
        opts.as_json,
        data,
        f"{data['username']}\nidentity {data['identity_key']}\n"
        f"server {data['server']}\nhome {data['home']}",
    )


@cli.group()
def account() -> None:
    """Your account on the server: rename it, or delete it for good."""


@account.command("rename")
@click.argument("new_name", metavar="NEW")
@pass_options
def account_rename(opts: Options, new_name: str) -> None:
    """Take the username NEW instead of yours (contacts keep you, under the new name)."""
    data = _call(opts, "accountRename", {"username": new_name})
    now, was = printable(data["username"]), printable(data["old"])
    emit(opts.as_json, data, f"you are now {now} (was {was})")


@account.command("delete")
@pass_options
def account_delete(opts: Options) -> None:
    """Delete your account on the server, for good (asks you to type your username).

    The server drops what it holds for you and tells your groups; members
    remove you with their next change. This profile cannot be used on that
    server again; its history stays on this machine.
    """
    me = _call(opts, "whoami")
    typed = click.prompt(
        f"This deletes {printable(me['username'])} on {me['server']} for good. Type your"
        " username to confirm",
        default="",
        show_default=False,
        err=True,
    )
    if typed != me["username"]:
        fail("not deleted: that is not your username")
    # The method checks the name again: what was confirmed is what is deleted.
    data = _call(opts, "accountDelete", {"username": typed})
    emit(opts.as_json, data, f"deleted the account {printable(data['username'])}")


@cli.group()
def group() -> None:
    """Create, list and change groups."""


_SUITE_CHOICE = click.Choice(_SUITES)


@group.command("create")
@click.argument("name")
@click.option(
    "--suite",
    type=_SUITE_CHOICE,
    default=None,
    help="The group's ciphersuite, fixed for its life: pq (post-quantum key agreement,"
    " X-Wing) or default [the setting of `qpq suite`].",
)
@pass_options
def group_create(opts: Options, name: str, suite: str | None) -> None:
    """Create a group called NAME with only you in it."""
    result = _call(opts, "createGroup", {"name": name, "suite": suite})
    kind = " (post-quantum)" if result["suite"] == "pq" else ""
    emit(opts.as_json, result, f"created group {result['name']}{kind}")


@group.command("list")
@pass_options
def group_list(opts: Options) -> None:
    """List your groups (from local state)."""
    listed = _call(opts, "listGroups")
    groups, dropped = listed["groups"], listed["requests_dropped"]
    if opts.as_json:
        emit(True, groups, None)
        return
    for g in groups:
        click.echo(group_text(g))
    if dropped:
        click.echo(
            f"({dropped} invitations from people who are not contacts were not kept:"
            " as many as a profile holds were waiting; accept or decline some)"
        )


@group.command("rename")
@click.argument("old", metavar="OLD")
@click.argument("new", metavar="NEW")
@pass_options
def group_rename(opts: Options, old: str, new: str) -> None:
    """Call group OLD NEW here (names are yours: the members keep theirs)."""
    result = _call(opts, "renameGroup", {"group": old, "name": new})
    emit(opts.as_json, result, f"renamed {printable(old)} to {printable(result['name'])}")


@group.command("members")
@click.argument("name")
@pass_options
def group_members(opts: Options, name: str) -> None:
    """List the members of group NAME."""
    members = _call(opts, "members", {"group": name})
    lines = [printable(m) for m in members]
    suite = _call(opts, "groupSuite", {"group": name})["suite"]
    if suite != "default":
        lines.append(f"(ciphersuite: {suite})")
    emit(opts.as_json, members, "\n".join(lines))


@group.command("invite")
@click.argument("name")
@click.argument("usernames", nargs=-1, required=True)
@pass_options
def group_invite(opts: Options, name: str, usernames: tuple[str, ...]) -> None:
    """Add USERNAMES to group NAME."""
    result = _call(opts, "invite", {"group": name, "usernames": list(usernames)})
    added = result["added"]
    text = f"invited {', '.join(added)} to {name}" if added else "everyone is a member already"
    emit(opts.as_json, result, text)


@group.command("remove")
@click.argument("name")
@click.argument("usernames", nargs=-1, required=True)
@pass_options
def group_remove(opts: Options, name: str, usernames: tuple[str, ...]) -> None:
    """Remove USERNAMES from group NAME."""
    result = _call(opts, "remove", {"group": name, "usernames": list(usernames)})
    emit(opts.as_json, result, f"removed {', '.join(usernames)} from {name}")


@group.command("update")
@click.argument("name")
@pass_options
def group_update(opts: Options, name: str) -> None:
    """Replace your keys in group NAME (recovers security after a device compromise)."""
    result = _call(opts, "update", {"group": name})
    emit(opts.as_json, result, f"updated your keys in {name} (epoch {result['epoch']})")


@group.command("leave")
@click.argument("name")
@pass_options
def group_leave(opts: Options, name: str) -> None:
    """Leave group NAME (a remaining member completes it)."""
    result = _call(opts, "leave", {"group": name})
    emit(opts.as_json, result, f"leaving {name}")


@group.command("accept")
@click.argument("name")
@pass_options
def group_accept(opts: Options, name: str) -> None:
    """Accept the invitation waiting as NAME: join, then receive what was held."""
    result = _call(opts, "accept", {"group": name})
    emit(opts.as_json, result, f"joined {result['name']} (qpq recv shows what was held)")


@group.command("decline")
@click.argument("name")
@pass_options
def group_decline(opts: Options, name: str) -> None:
    """Decline the invitation waiting as NAME (you leave the group; nothing is kept)."""
    result = _call(opts, "decline", {"group": name})
    emit(opts.as_json, result, f"declined {name}")


@cli.command()
@click.argument("group_name", metavar="GROUP")
@click.argument("text")
@click.option("-v", "--verbose", is_flag=True, help="Say in one line that it was sent.")
@pass_options
def send(opts: Options, group_name: str, text: str, verbose: bool) -> None:
    """Send TEXT to everyone in GROUP (TEXT "-": read it from stdin, to its end;
    a final newline is dropped)."""
    if text == "-":
        text = _read_stdin()
    result = _call(opts, "send", {"group": group_name, "text": text})
    size = len(text.encode("utf-8"))
    emit(
        opts.as_json,
        result,
        f"sent to {printable(group_name)} ({size:,} bytes)" if verbose else None,
    )


def _read_stdin() -> str:
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8").removesuffix("\n")
    except UnicodeDecodeError as error:
        raise click.UsageError(f"the text on stdin is not UTF-8 (byte {error.start})") from None


@cli.group(invoke_without_command=True)
@click.pass_context
def outbox(ctx: click.Context) -> None:
    """List what waits to be sent to the server; drop an entry with `qpq outbox drop ID`.

    Waiting entries are sent by the next command that reaches the server;
    what the server refuses for good is dropped and reported in the group.
    """
    if ctx.invoked_subcommand is not None:
        return
    opts = ctx.find_object(Options)
    if opts is None:  # pragma: no cover - the cli group always sets it
        raise click.UsageError("no options")
    entries = _call(opts, "outbox")
    if opts.as_json:
        emit(True, entries, None)
        return
    if not entries:
        click.echo("nothing waits to be sent")
    for entry in entries:
        click.echo(outbox_text(entry))


@outbox.command("drop")
@click.argument("entry_id", metavar="ID", type=int)
@pass_options
def outbox_drop(opts: Options, entry_id: int) -> None:
    """Remove entry ID from the outbox: it is not sent."""
    data = _call(opts, "dropOutbox", {"id": entry_id})
    emit(opts.as_json, data, f"dropped {data['kind']} {entry_id} to {printable(data['group'])}")


@cli.command()
@click.option("--wait", type=float, default=0.0, metavar="S", help="Wait up to S seconds.")
@click.option("--follow", is_flag=True, help="Keep printing new messages until interrupted.")
@pass_options
def recv(opts: Options, wait: float, follow: bool) -> None:
    """Receive: process what arrived, print what is new."""
    if not follow:
        for data in _call(opts, "receive", {"wait": wait}):
            emit(opts.as_json, data, entry_text(data, with_time=True))
        return
    link = daemon_link(opts.home)
    if link is None:
        from qpq_client.cli._local import follow_locally  # noqa: PLC0415 - off the daemon path

        follow_locally(opts.home, opts.passphrase, opts.connection(), opts.as_json)
        return
    follow_daemon(link, opts.as_json)


@cli.command()
@pass_options
def chat(opts: Options) -> None:
    """Chat in the terminal: your groups, their messages as they arrive, an input line
    (/help lists its commands). Through the profile's daemon when one runs."""
    from qpq_client.cli._chat import run_chat  # noqa: PLC0415 - loads prompt_toolkit

    run_chat(opts)


@cli.command()
@click.argument("group_name", metavar="GROUP")
@pass_options
def history(opts: Options, group_name: str) -> None:
    """Print the stored history of GROUP (no network)."""
    for data in _call(opts, "history", {"group": group_name}):
        emit(opts.as_json, data, entry_text(data, with_time=True))


@cli.group(invoke_without_command=True)
@click.pass_context
def contacts(ctx: click.Context) -> None:
    """List pinned keys (username, key, verified?, changed?); add a contact or accept a key."""
    if ctx.invoked_subcommand is not None:
        return
    opts = ctx.find_object(Options)
    if opts is None:  # pragma: no cover - the cli group always sets it
        raise click.UsageError("no options")
    listed = _call(opts, "contacts")
    if opts.as_json:
        emit(True, listed, None)
        return
    for contact in listed:
        click.echo(contact_text(contact))


@contacts.command("add")
@click.argument("usernames", nargs=-1, required=True)
@pass_options
def contacts_add(opts: Options, usernames: tuple[str, ...]) -> None:
    """Look USERNAMES up and pin their keys; their invitations are then joined."""
    for data in _call(opts, "addContacts", {"usernames": list(usernames)}):
        emit(opts.as_json, data, f"added {data['username']} (key {data['identity_key'][:16]}…)")


@contacts.command("remove")
@click.argument("username")
@pass_options
def contacts_remove(opts: Options, username: str) -> None:
    """Remove USERNAME from your contacts: its key is unpinned, and its invitations
    wait as requests again (a block stays: qpq unblock)."""
    data = _call(opts, "removeContact", {"username": username})
    emit(opts.as_json, data, f"removed {printable(data['username'])} from your contacts")


@contacts.command("accept")
@click.argument("username")
@pass_options
def contacts_accept(opts: Options, username: str) -> None:
    """Pin the new key the server gives for USERNAME (check with them first)."""
    data = _call(opts, "acceptKey", {"username": username})
    emit(
        opts.as_json,
        data,
        f"{data['username']}'s pinned key is {data['identity_key'][:16]}…, not verified"
        f" (compare safety numbers: qpq verify {data['username']})",
    )


@cli.command()
@click.argument("username")
@click.option("--mark", is_flag=True, help="Mark USERNAME verified (the numbers matched).")
@pass_options
def verify(opts: Options, username: str, mark: bool) -> None:
    """Show the safety number you and USERNAME share; compare it with theirs."""
    data = _call(opts, "verify", {"username": username, "mark": mark})
    lines = safety_lines(username, data["safety_number"])
    lines.append(
        f"{username} is marked verified"
        if data["verified"]
        else f"if they match: qpq verify {username} --mark"
    )
    emit(opts.as_json, data, "\n".join(lines))


@cli.command()
@click.argument("username")
@pass_options
def block(opts: Options, username: str) -> None:
    """Drop everything from USERNAME: invitations, and messages in any group."""
    data = _call(opts, "block", {"username": username})
    emit(opts.as_json, data, f"blocked {username}")


@cli.command()
@click.argument("username")
@pass_options
def unblock(opts: Options, username: str) -> None:
    """Show what USERNAME sends again."""
    data = _call(opts, "unblock", {"username": username})
    emit(opts.as_json, data, f"unblocked {username}")


@cli.command()
@click.argument("policy", required=False, type=click.Choice(_INVITE_POLICIES))
@pass_options
def invites(opts: Options, policy: str | None) -> None:
    """Show or set whose invitations are joined at once: anyone, or contacts (default).

    Invitations from others wait as requests: qpq group accept / decline.
    """
    data = _call(opts, "invitePolicy", {"policy": policy})
    current = data["invites"]
    emit(opts.as_json, data, f"invitations joined at once: from {current}")


@cli.command("suite")
@click.argument("suite", required=False, type=_SUITE_CHOICE)
@pass_options
def suite_setting(opts: Options, suite: str | None) -> None:
    """Show or set the ciphersuite new groups get: default, or pq (post-quantum
    key agreement: X-Wing, ML-KEM-768 with X25519; every member needs a client
    that offers it). A group keeps the suite it was created with."""
    data = _call(opts, "defaultSuite", {"suite": suite})
    emit(opts.as_json, data, f"new groups get the {data['suite']} ciphersuite")


@cli.command()
@click.argument("state", required=False, type=click.Choice(["on", "off"]))
@click.option("--listen", metavar="HOST:PORT", help="Where to accept direct connections.")
@click.option("--lan/--no-lan", default=None, help="Also find members on the LAN (mDNS).")
@pass_options
def p2p(opts: Options, state: str | None, listen: str | None, lan: bool | None) -> None:
    """Show or set direct delivery: application messages go straight to members
    who can be reached (and through the server when they cannot); group
    changes always go through the server."""
    enabled = None if state is None else state == "on"
    data = _call(opts, "directDelivery", {"enabled": enabled, "listen": listen, "lan": lan})
    where = f", listening on {data['listen']}" + (", LAN discovery" if data["lan"] else "")
    emit(opts.as_json, data, f"direct delivery {'on' + where if data['p2p'] else 'off'}")


@cli.command()
@click.option("--no-probe", is_flag=True, help="Do not try to reach them now.")
@pass_options
def peers(opts: Options, no_probe: bool) -> None:
    """List the members you share a group with: how each was found, whether reachable."""
    if opts.p2p is False:
        raise click.UsageError("peers needs direct delivery: drop --no-p2p")
    found = _call(opts, "peers", {"probe": not no_probe}, p2p=True)
    if opts.as_json:
        emit(True, found, None)
        return
    for peer in found:
        click.echo(peer_line(peer))


@cli.group()
def keys() -> None:
    """KeyPackages on the server (others need one to add you)."""


@keys.command("status")
@pass_options
def keys_status(opts: Options) -> None:
    """Show how many KeyPackages the server holds for you (refilling if low)."""
    _keys(opts, refresh=False)


@keys.command("refresh")
@pass_options
def keys_refresh(opts: Options) -> None:
    """Upload fresh KeyPackages and a new last-resort package."""
    _keys(opts, refresh=True)


def _keys(opts: Options, *, refresh: bool) -> None:
    data = _call(opts, "keysRefresh" if refresh else "keysStatus")
    last = "yes" if data["has_last_resort"] else "no"
    served = data["last_resort_served"]
    if served:
        last += (
            f", handed out {served} times since it was uploaded (each such invitation"
            " reuses its keys; qpq keys refresh replaces it)"
        )
    others = [
        f"; {s['suite']}: {s['available']} KeyPackages, last resort:"
        f" {'yes' if s['has_last_resort'] else 'no'}"
        + (f", handed out {s['last_resort_served']} times" if s["last_resort_served"] else "")
        for s in data["suites"]
        if s["suite"] != "default"
    ]
    emit(
        opts.as_json,
        data,
        f"{data['available']} KeyPackages on the server, last resort: {last}"
        f" (uploaded {data['uploaded']} now)" + "".join(others),
    )


def _configure_logging() -> None:
    # The library's notices (a message dropped, one that could not be
    # processed) are for the person at the terminal, in our voice. aioquic
    # logs transport failures itself; we report each as one error line, so
    # its own copy stays out of the output.
    notices = logging.StreamHandler()
    notices.setFormatter(logging.Formatter("qpq: %(message)s"))
    library = logging.getLogger("qpq_client")
    library.addHandler(notices)
    library.setLevel(logging.WARNING)
    library.propagate = False
    transport = logging.getLogger("quic")
    transport.addHandler(logging.NullHandler())
    transport.propagate = False


cli.add_command(daemon)
cli.add_command(backup)


def main() -> None:
    """Console entry point of ``qpq`` and ``qpq-client``."""
    _configure_logging()
    try:
        # Not click's standalone mode: its usage error is three lines and
        # exit status 2; ours is the one error line, status 1, as for any error.
        status = cli.main(prog_name="qpq", standalone_mode=False)
    except click.UsageError as error:
        if error.ctx is not None and error.format_message() == error.ctx.get_help():
            # A group without its command (`qpq group`): its help is the answer.
            click.echo(error.format_message(), err=True)
            sys.exit(EXIT_ERROR)
        where = f" (see {error.ctx.command_path} --help)" if error.ctx is not None else ""
        fail(f"{error.format_message()}{where}")
    except click.ClickException as error:
        fail(error.format_message())
    except click.Abort:
        click.echo("qpq: aborted", err=True)
        sys.exit(EXIT_ERROR)
    sys.exit(status if isinstance(status, int) else 0)
