"""The ``qpq`` command line. Every command is a few lines over :class:`qpq_client.Client`."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click
import platformdirs

from qpq_client import Client, DirectDelivery, InvitePolicy, ServerAddress, Suite, Trust
from qpq_client._config import (
    ENV_CA_CERT,
    ENV_HOME,
    ENV_PIN,
    ENV_SERVER,
    ENV_STATE_KEY,
    ENV_TOKEN,
)
from qpq_client.cli._errors import map_errors
from qpq_client.cli._render import (
    contact_json,
    contact_line,
    emit,
    entry_json,
    entry_line,
    group_json,
    group_line,
    keys_json,
    outbox_json,
    outbox_line,
    peer_json,
    peer_line,
    printable,
    safety_lines,
)
from qpq_proto import format_host_port

__all__ = ["cli", "main"]

_T = TypeVar("_T")


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
        if self.ca_cert is None and self.pin is None:
            return None
        return Trust.from_options(self.ca_cert, self.pin)

    def address(self) -> ServerAddress | None:
        return ServerAddress.parse(self.server) if self.server else None


def _run(work: Callable[[], Awaitable[_T]]) -> _T:
    with map_errors():
        return asyncio.run(_awaited(work))
    raise AssertionError("unreachable")  # pragma: no cover - map_errors exits


async def _awaited(work: Callable[[], Awaitable[_T]]) -> _T:
    return await work()


def _offline(opts: Options, local: Callable[[Client], _T]) -> _T:
    """Open the profile, run ``local`` on the local state alone, close."""

    async def work() -> _T:
        client = Client.open(opts.home, opts.passphrase())
        try:
            return local(client)
        finally:
            await client.close()

    return _run(work)


def _online(opts: Options, operation: Callable[[Client], Awaitable[_T]]) -> _T:
    """Open the profile, connect, run ``operation``, close: the shape of every online command."""

    async def work() -> _T:
        client = Client.open(opts.home, opts.passphrase())
        try:
            await client.connect(
                server=opts.address(),
                trust=opts.trust(),
                token=opts.token,
                connect_timeout=opts.connect_timeout,
                p2p=opts.p2p,
            )
            return await operation(client)
        finally:
            await client.close()

    return _run(work)


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
@pass_options
def init(opts: Options, username: str) -> None:
    """Create an identity, register USERNAME and upload KeyPackages."""

    async def work() -> dict[str, Any]:
        address = opts.address()
        if address is None:
            raise click.UsageError(f"init needs --server HOST:PORT (or ${ENV_SERVER})")
        trust = Trust.from_options(opts.ca_cert, opts.pin)
        client = await Client.create(
            opts.home,
            opts.passphrase(confirm=True),
            username,
            server=address,
            trust=trust,
            token=opts.token or "",
            connect_timeout=opts.connect_timeout,
        )
        await client.close()
        return {"username": username, "identity_key": client.identity_key.hex()}

    result = _run(work)
    emit(opts.as_json, result, f"registered {username} (identity {result['identity_key'][:16]}…)")


@cli.command()
@pass_options
def whoami(opts: Options) -> None:
    """Show this profile's username, identity key, server and home."""
    data = _offline(
        opts,
        lambda client: {
            "username": client.username,
            "identity_key": client.identity_key.hex(),
            "server": client.server,
            "home": str(client.home),
        },
    )
    emit(
        opts.as_json,
        data,
        f"{data['username']}\nidentity {data['identity_key']}\n"
        f"server {data['server']}\nhome {data['home']}",
    )


@cli.group()
def group() -> None:
    """Create, list and change groups."""


_SUITE_CHOICE = click.Choice([suite.label for suite in Suite])


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

    async def create(client: Client) -> dict[str, Any]:
        chosen = None if suite is None else Suite.from_label(suite)
        return group_json(await client.create_group(name, chosen))

    result = _online(opts, create)
    kind = " (post-quantum)" if result["suite"] == Suite.XWING.label else ""
    emit(opts.as_json, result, f"created group {result['name']}{kind}")


@group.command("list")
@pass_options
def group_list(opts: Options) -> None:
    """List your groups (from local state)."""
    groups, dropped = _offline(opts, lambda client: (client.groups(), client.requests_dropped))
    if opts.as_json:
        emit(True, [group_json(g) for g in groups], None)
        return
    for g in groups:
        click.echo(group_line(g))
    if dropped:
        click.echo(
            f"({dropped} invitations from people who are not contacts were not kept:"
            " as many as a profile holds were waiting; accept or decline some)"
        )


@group.command("members")
@click.argument("name")
@pass_options
def group_members(opts: Options, name: str) -> None:
    """List the members of group NAME."""

    async def members(client: Client) -> tuple[list[str], Suite]:
        return await client.members(name), client.group_suite(name)

    names, suite = _online(opts, members)
    lines = [printable(m) for m in names]
    if suite is not Suite.DEFAULT:
        lines.append(f"(ciphersuite: {suite.label})")
    emit(opts.as_json, names, "\n".join(lines))


@group.command("invite")
@click.argument("name")
@click.argument("usernames", nargs=-1, required=True)
@pass_options
def group_invite(opts: Options, name: str, usernames: tuple[str, ...]) -> None:
    """Add USERNAMES to group NAME."""

    added = _online(opts, lambda client: client.invite(name, usernames))
    text = f"invited {', '.join(added)} to {name}" if added else "everyone is a member already"
    emit(opts.as_json, {"group": name, "added": added}, text)


@group.command("remove")
@click.argument("name")
@click.argument("usernames", nargs=-1, required=True)
@pass_options
def group_remove(opts: Options, name: str, usernames: tuple[str, ...]) -> None:
    """Remove USERNAMES from group NAME."""

    _online(opts, lambda client: client.remove(name, usernames))
    emit(
        opts.as_json,
        {"group": name, "removed": list(usernames)},
        f"removed {', '.join(usernames)} from {name}",
    )


@group.command("update")
@click.argument("name")
@pass_options
def group_update(opts: Options, name: str) -> None:
    """Replace your keys in group NAME (recovers security after a device compromise)."""

    async def update(client: Client) -> dict[str, Any]:
        return group_json(await client.update(name))

    result = _online(opts, update)
    emit(opts.as_json, result, f"updated your keys in {name} (epoch {result['epoch']})")


@group.command("leave")
@click.argument("name")
@pass_options
def group_leave(opts: Options, name: str) -> None:
    """Leave group NAME (a remaining member completes it)."""

    _online(opts, lambda client: client.leave(name))
    emit(opts.as_json, {"group": name, "left": True}, f"leaving {name}")


@group.command("accept")
@click.argument("name")
@pass_options
def group_accept(opts: Options, name: str) -> None:
    """Accept the invitation waiting as NAME: join, then receive what was held."""

    async def accept(client: Client) -> dict[str, Any]:
        return group_json(await client.accept(name))

    result = _online(opts, accept)
    emit(opts.as_json, result, f"joined {result['name']} (qpq recv shows what was held)")


@group.command("decline")
@click.argument("name")
@pass_options
def group_decline(opts: Options, name: str) -> None:
    """Decline the invitation waiting as NAME (you leave the group; nothing is kept)."""

    _online(opts, lambda client: client.decline(name))
    emit(opts.as_json, {"group": name, "declined": True}, f"declined {name}")


@cli.command()
@click.argument("group_name", metavar="GROUP")
@click.argument("text")
@pass_options
def send(opts: Options, group_name: str, text: str) -> None:
    """Send TEXT to everyone in GROUP (TEXT "-": read it from stdin, to its end;
    a final newline is dropped)."""
    if text == "-":
        text = _read_stdin()
    _online(opts, lambda client: client.send(group_name, text))
    emit(opts.as_json, {"group": group_name, "sent": True}, None)


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
    entries = _offline(opts, lambda client: client.outbox())
    if opts.as_json:
        emit(True, [outbox_json(e) for e in entries], None)
        return
    if not entries:
        click.echo("nothing waits to be sent")
    for entry in entries:
        click.echo(outbox_line(entry))


@outbox.command("drop")
@click.argument("entry_id", metavar="ID", type=int)
@pass_options
def outbox_drop(opts: Options, entry_id: int) -> None:
    """Remove entry ID from the outbox: it is not sent."""

    async def work() -> dict[str, Any]:
        client = Client.open(opts.home, opts.passphrase())
        try:
            return outbox_json(await client.drop_outbox(entry_id))
        finally:
            await client.close()

    data = _run(work)
    emit(opts.as_json, data, f"dropped {data['kind']} {entry_id} to {printable(data['group'])}")


@cli.command()
@click.option("--wait", type=float, default=0.0, metavar="S", help="Wait up to S seconds.")
@click.option("--follow", is_flag=True, help="Keep printing new messages until interrupted.")
@pass_options
def recv(opts: Options, wait: float, follow: bool) -> None:
    """Receive: process what arrived, print what is new."""

    def show(entry: Any) -> None:
        emit(opts.as_json, entry_json(entry), entry_line(entry))

    async def receive(client: Client) -> None:
        if follow:
            async for entry in client.follow():
                show(entry)
        else:
            for entry in await client.receive(wait=wait):
                show(entry)

    _online(opts, receive)


@cli.command()
@click.argument("group_name", metavar="GROUP")
@pass_options
def history(opts: Options, group_name: str) -> None:
    """Print the stored history of GROUP (no network)."""
    entries = _offline(opts, lambda client: client.history(group_name))
    for entry in entries:
        emit(opts.as_json, entry_json(entry), entry_line(entry, with_time=True))


@cli.group(invoke_without_command=True)
@click.pass_context
def contacts(ctx: click.Context) -> None:
    """List pinned keys (username, key, verified?, changed?); add a contact or accept a key."""
    if ctx.invoked_subcommand is not None:
        return
    opts = ctx.find_object(Options)
    if opts is None:  # pragma: no cover - the cli group always sets it
        raise click.UsageError("no options")
    listed = _offline(opts, lambda client: client.contacts())
    if opts.as_json:
        emit(True, [contact_json(c) for c in listed], None)
        return
    for contact in listed:
        click.echo(contact_line(contact))


@contacts.command("add")
@click.argument("usernames", nargs=-1, required=True)
@pass_options
def contacts_add(opts: Options, usernames: tuple[str, ...]) -> None:
    """Look USERNAMES up and pin their keys; their invitations are then joined."""

    async def add(client: Client) -> list[dict[str, Any]]:
        return [contact_json(await client.add_contact(name)) for name in usernames]

    for data in _online(opts, add):
        emit(opts.as_json, data, f"added {data['username']} (key {data['identity_key'][:16]}…)")


@contacts.command("accept")
@click.argument("username")
@pass_options
def contacts_accept(opts: Options, username: str) -> None:
    """Pin the new key the server gives for USERNAME (check with them first)."""
    data = _offline(opts, lambda client: contact_json(client.accept_key(username)))
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

    async def work(client: Client) -> dict[str, Any]:
        number = await client.safety_number(username)
        contact = await client.mark_verified(username) if mark else client.contact(username)
        return {"username": username, "safety_number": number, "verified": contact.verified}

    data = _online(opts, work)
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
    _online(opts, lambda client: client.block(username))
    emit(opts.as_json, {"username": username, "blocked": True}, f"blocked {username}")


@cli.command()
@click.argument("username")
@pass_options
def unblock(opts: Options, username: str) -> None:
    """Show what USERNAME sends again."""
    _offline(opts, lambda client: client.unblock(username))
    emit(opts.as_json, {"username": username, "blocked": False}, f"unblocked {username}")


@cli.command()
@click.argument("policy", required=False, type=click.Choice([p.value for p in InvitePolicy]))
@pass_options
def invites(opts: Options, policy: str | None) -> None:
    """Show or set whose invitations are joined at once: anyone, or contacts (default).

    Invitations from others wait as requests: qpq group accept / decline.
    """

    def apply(client: Client) -> str:
        if policy is not None:
            client.set_invite_policy(policy)
        return client.invite_policy.value

    current = _offline(opts, apply)
    emit(opts.as_json, {"invites": current}, f"invitations joined at once: from {current}")


@cli.command("suite")
@click.argument("suite", required=False, type=_SUITE_CHOICE)
@pass_options
def suite_setting(opts: Options, suite: str | None) -> None:
    """Show or set the ciphersuite new groups get: default, or pq (post-quantum
    key agreement: X-Wing, ML-KEM-768 with X25519; every member needs a client
    that offers it). A group keeps the suite it was created with."""

    def apply(client: Client) -> str:
        if suite is not None:
            client.set_default_suite(suite)
        return client.default_suite.label

    current = _offline(opts, apply)
    emit(opts.as_json, {"suite": current}, f"new groups get the {current} ciphersuite")


@cli.command()
@click.argument("state", required=False, type=click.Choice(["on", "off"]))
@click.option("--listen", metavar="HOST:PORT", help="Where to accept direct connections.")
@click.option("--lan/--no-lan", default=None, help="Also find members on the LAN (mDNS).")
@pass_options
def p2p(opts: Options, state: str | None, listen: str | None, lan: bool | None) -> None:
    """Show or set direct delivery: application messages go straight to members
    who can be reached (and through the server when they cannot); group
    changes always go through the server."""

    def apply(client: Client) -> DirectDelivery:
        setting = client.direct_delivery()
        host, port = setting.host, setting.port
        if listen is not None:
            try:
                host, port = DirectDelivery.parse_listen(listen)
            except ValueError as error:
                raise click.UsageError(str(error)) from None
        enabled = setting.enabled if state is None else state == "on"
        changed = DirectDelivery(enabled, host, port, setting.lan if lan is None else lan)
        if changed != setting:
            client.set_direct_delivery(changed)
        return changed

    setting = _offline(opts, apply)
    data = {
        "p2p": setting.enabled,
        "listen": format_host_port(setting.host, setting.port),
        "lan": setting.lan,
    }
    where = f" on {data['listen']}" + (", LAN discovery" if setting.lan else "")
    emit(opts.as_json, data, f"direct delivery {'on' + where if setting.enabled else 'off'}")


@cli.command()
@click.option("--no-probe", is_flag=True, help="Do not try to reach them now.")
@pass_options
def peers(opts: Options, no_probe: bool) -> None:
    """List the members you share a group with: how each was found, whether reachable."""
    if opts.p2p is False:
        raise click.UsageError("peers needs direct delivery: drop --no-p2p")

    async def listing(client: Client) -> list[dict[str, Any]]:
        return [
            peer_json(peer, client.display_name(peer.identity_key))
            for peer in await client.peers(probe=not no_probe)
        ]

    found = _online(dataclasses.replace(opts, p2p=True), listing)
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
    async def keys(client: Client) -> dict[str, Any]:
        return keys_json(await (client.refresh_keys() if refresh else client.key_status()))

    data = _online(opts, keys)
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
        if s["suite"] != Suite.DEFAULT.label
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


def main() -> None:
    """Console entry point of ``qpq`` and ``qpq-client``."""
    _configure_logging()
    cli(prog_name="qpq")
