"""``qpq device``: link this machine to your account, approve a link, list and remove devices.

``link`` runs on the new machine (a fresh profile, so never through a
daemon); the others are methods of :mod:`qpq_client.cli._methods`, called
through the profile's daemon when one runs.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from qpq_client._env import ENV_SERVER
from qpq_client.cli._errors import fail
from qpq_client.cli._render import emit, printable

if TYPE_CHECKING:
    from qpq_client.cli._main import Options

# The global options object ``qpq`` builds (qpq_client.cli._main.Options);
# this module is imported by _main, so it takes the object from the context.
pass_options = click.pass_obj


def _call(opts: Options, method: str, params: dict[str, Any] | None = None) -> Any:
    from qpq_client.cli._main import call_method  # noqa: PLC0415 - _main imports this module

    return call_method(opts, method, params)


__all__ = ["device"]


@click.group()
def device() -> None:
    """Your account's devices: link this machine, approve a new one, list, remove."""


@device.command("link")
@click.argument("username")
@click.option("--name", "device_name", required=True, help="What this device is called.")
@pass_options
def device_link(opts: Options, username: str, device_name: str) -> None:
    """Link this machine (a fresh profile) to USERNAME's account.

    Prints a code; approve it on a device of the account with `qpq device
    approve CODE` (compare the fingerprint both show). Waits for the
    approval, then joins the account's groups as the approving device adds
    this one.
    """

    async def work() -> dict[str, Any]:
        from qpq_client import Client, Trust  # noqa: PLC0415 - off the daemon path

        address = opts.address()
        if address is None:
            raise click.UsageError(f"device link needs --server HOST:PORT (or ${ENV_SERVER})")
        pending = await Client.request_link(
            opts.home,
            opts.passphrase(confirm=True),
            username,
            device_name,
            server=address,
            trust=Trust.from_options(opts.ca_cert, opts.pin),
            token=opts.token or "",
            connect_timeout=opts.connect_timeout,
        )
        shown = {"code": pending.code, "uri": pending.uri, "fingerprint": pending.fingerprint}
        emit(
            opts.as_json,
            shown,
            f"link code: {pending.code}\n{pending.uri}\nthis device: {pending.fingerprint}\n"
            f"on a device of {printable(username)}: qpq device approve {pending.code}",
        )
        sys.stdout.flush()
        client = await Client.finish_link(pending)
        await client.close()
        return {"linked": True, "username": client.username, "device": device_name}

    from qpq_client.cli._local import run  # noqa: PLC0415 - off the daemon path

    result: dict[str, Any] = run(work)
    emit(
        opts.as_json,
        result,
        f"linked: this device ({printable(device_name)}) acts for {printable(result['username'])}",
    )


@device.command("approve")
@click.argument("code")
@click.option("--yes", is_flag=True, help="Do not ask to confirm the fingerprint.")
@click.option(
    "--with-history", is_flag=True, help="Hand over the groups' recent history too (encrypted)."
)
@pass_options
def device_approve(opts: Options, code: str, yes: bool, with_history: bool) -> None:
    """Approve the link CODE a new device of yours shows (or its qpq://link/ URI).

    Shows the new device's name and fingerprint: they must match what it
    shows. The new device gets your account key, contacts and group names,
    end-to-end encrypted, and is added to each of your groups; with
    --with-history, the groups' recent history too (else it starts empty).
    """
    asked = _call(opts, "linkRequest", {"code": code})
    if not opts.as_json:
        name, fingerprint = printable(asked["name"]), asked["fingerprint"]
        click.echo(f"device {name} asks to be linked; fingerprint {fingerprint}", err=True)
    if not yes and not click.confirm("Is this the fingerprint the new device shows?", err=True):
        fail("not approved")
    data = _call(opts, "approveLink", {"code": code, "with_history": with_history})
    groups = ", ".join(printable(g) for g in data["groups"]) or "none"
    emit(opts.as_json, data, f"approved {printable(asked['name'])}; added to: {groups}")


@device.command("list")
@pass_options
def device_list(opts: Options) -> None:
    """List your account's devices."""
    devices = _call(opts, "devices")
    lines = [
        f"{printable(d['name'])}{' (this device)' if d['current'] else ''}  {d['fingerprint']}"
        for d in devices
    ]
    emit(opts.as_json, devices, "\n".join(lines))


@device.command("remove")
@click.argument("name")
@pass_options
def device_remove(opts: Options, name: str) -> None:
    """Remove (revoke) device NAME of your account, from another device.

    The server refuses it from now on and closes its connections; it is
    removed from each of your groups by a commit.
    """
    data = _call(opts, "removeDevice", {"name": name})
    emit(opts.as_json, data, f"removed {printable(data['name'])}")
