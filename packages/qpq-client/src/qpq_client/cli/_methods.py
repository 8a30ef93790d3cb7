"""What each ``qpq`` command does, once: a JSON-RPC method over :class:`~qpq_client.Client`.

A command run on its own calls the method in process; through a running
``qpq daemon`` it is the same method, called over the socket. Both answer
the same JSON, which the CLI prints (``--json``) or draws as lines, so the
two paths cannot drift apart. docs/daemon.md lists the methods.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from qpq_client import Client, ClientError, DirectDelivery, InvitePolicy, Suite
from qpq_client.cli._render import (
    contact_json,
    entry_json,
    group_json,
    keys_json,
    outbox_json,
    peer_json,
)
from qpq_proto import format_host_port

__all__ = ["METHODS", "InvalidParamsError", "Method", "Params"]


class InvalidParamsError(ValueError):
    """A call's params are missing or of the wrong type (JSON-RPC -32602)."""


class Params:
    """A call's params, read with their types checked."""

    def __init__(self, raw: object) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise InvalidParamsError("params must be an object")
        self._raw: dict[str, Any] = raw

    def text(self, name: str) -> str:
        value = self._raw.get(name)
        if not isinstance(value, str):
            raise InvalidParamsError(f"{name} must be a string")
        return value

    def optional_text(self, name: str) -> str | None:
        return None if self._raw.get(name) is None else self.text(name)

    def texts(self, name: str) -> tuple[str, ...]:
        value = self._raw.get(name)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise InvalidParamsError(f"{name} must be a non-empty list of strings")
        return tuple(value)

    def flag(self, name: str) -> bool:
        value = self._raw.get(name, False)
        if not isinstance(value, bool):
            raise InvalidParamsError(f"{name} must be true or false")
        return value

    def optional_flag(self, name: str) -> bool | None:
        return None if self._raw.get(name) is None else self.flag(name)

    def number(self, name: str, default: float = 0.0) -> float:
        value = self._raw.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise InvalidParamsError(f"{name} must be a number, 0 or more")
        return float(value)

    def integer(self, name: str) -> int:
        value = self._raw.get(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidParamsError(f"{name} must be an integer")
        return value


@dataclass(frozen=True)
class Method:
    """One method: what it does, and whether it needs the server."""

    run: Callable[[Client, Params], Awaitable[Any]]
    online: bool


async def _whoami(client: Client, _: Params) -> dict[str, Any]:
    return {
        "username": client.username,
        "identity_key": client.identity_key.hex(),
        "server": client.server,
        "home": str(client.home),
    }


async def _send(client: Client, params: Params) -> dict[str, Any]:
    group = params.text("group")
    await client.send(group, params.text("text"))
    return {"group": group, "sent": True}


async def _receive(client: Client, params: Params) -> list[dict[str, Any]]:
    return [entry_json(e) for e in await client.receive(wait=params.number("wait"))]


async def _list_groups(client: Client, _: Params) -> dict[str, Any]:
    return {
        "groups": [group_json(g) for g in client.groups()],
        "requests_dropped": client.requests_dropped,
    }


def _suite(params: Params) -> Suite | None:
    label = params.optional_text("suite")
    if label is None:
        return None
    try:
        return Suite.from_label(label)
    except ValueError as error:
        raise InvalidParamsError(str(error)) from None


async def _create_group(client: Client, params: Params) -> dict[str, Any]:
    return group_json(await client.create_group(params.text("name"), _suite(params)))


async def _rename_group(client: Client, params: Params) -> dict[str, Any]:
    return group_json(await client.rename_group(params.text("group"), params.text("name")))


async def _members(client: Client, params: Params) -> list[str]:
    devices = params.optional_flag("devices")
    return await client.members(params.text("group"), devices=bool(devices))


async def _group_suite(client: Client, params: Params) -> dict[str, Any]:
    group = params.text("group")
    return {"group": group, "suite": client.group_suite(group).label}


async def _default_suite(client: Client, params: Params) -> dict[str, Any]:
    suite = _suite(params)
    if suite is not None:
        await client.set_default_suite(suite)
    return {"suite": client.default_suite.label}


async def _invite(client: Client, params: Params) -> dict[str, Any]:
    group = params.text("group")
    return {"group": group, "added": await client.invite(group, params.texts("usernames"))}


async def _remove(client: Client, params: Params) -> dict[str, Any]:
    group, usernames = params.text("group"), params.texts("usernames")
    await client.remove(group, usernames)
    return {"group": group, "removed": list(usernames)}


async def _update(client: Client, params: Params) -> dict[str, Any]:
    return group_json(await client.update(params.text("group")))


async def _leave(client: Client, params: Params) -> dict[str, Any]:
    group = params.text("group")
    await client.leave(group)
    return {"group": group, "left": True}


async def _accept(client: Client, params: Params) -> dict[str, Any]:
    return group_json(await client.accept(params.text("group")))


async def _decline(client: Client, params: Params) -> dict[str, Any]:
    group = params.text("group")
    await client.decline(group)
    return {"group": group, "declined": True}


async def _history(client: Client, params: Params) -> list[dict[str, Any]]:
    return [entry_json(e) for e in client.history(params.text("group"))]


async def _outbox(client: Client, _: Params) -> list[dict[str, Any]]:
    return [outbox_json(e) for e in client.outbox()]


async def _drop_outbox(client: Client, params: Params) -> dict[str, Any]:
    return outbox_json(await client.drop_outbox(params.integer("id")))


async def _contacts(client: Client, _: Params) -> list[dict[str, Any]]:
    return [contact_json(c) for c in client.contacts()]


async def _add_contacts(client: Client, params: Params) -> list[dict[str, Any]]:
    return [contact_json(await client.add_contact(name)) for name in params.texts("usernames")]


async def _remove_contact(client: Client, params: Params) -> dict[str, Any]:
    return contact_json(await client.remove_contact(params.text("username")))


async def _accept_key(client: Client, params: Params) -> dict[str, Any]:
    return contact_json(await client.accept_key(params.text("username")))


async def _verify(client: Client, params: Params) -> dict[str, Any]:
    username = params.text("username")
    number = await client.safety_number(username)
    marked = params.flag("mark")
    contact = await client.mark_verified(username) if marked else client.contact(username)
    return {"username": username, "safety_number": number, "verified": contact.verified}


async def _block(client: Client, params: Params) -> dict[str, Any]:
    username = params.text("username")
    await client.block(username)
    return {"username": username, "blocked": True}


async def _unblock(client: Client, params: Params) -> dict[str, Any]:
    username = params.text("username")
    await client.unblock(username)
    return {"username": username, "blocked": False}


async def _invite_policy(client: Client, params: Params) -> dict[str, Any]:
    policy = params.optional_text("policy")
    if policy is not None:
        try:
            await client.set_invite_policy(policy)
        except ValueError:
            choices = ", ".join(p.value for p in InvitePolicy)
            raise InvalidParamsError(f"policy must be one of: {choices}") from None
    return {"invites": client.invite_policy.value}


async def _direct_delivery(client: Client, params: Params) -> dict[str, Any]:
    setting = client.direct_delivery()
    host, port = setting.host, setting.port
    listen = params.optional_text("listen")
    if listen is not None:
        try:
            host, port = DirectDelivery.parse_listen(listen)
        except ValueError as error:
            raise InvalidParamsError(str(error)) from None
    enabled = params.optional_flag("enabled")
    lan = params.optional_flag("lan")
    changed = DirectDelivery(
        setting.enabled if enabled is None else enabled,
        host,
        port,
        setting.lan if lan is None else lan,
    )
    if changed != setting:
        await client.set_direct_delivery(changed)
    return {
        "p2p": changed.enabled,
        "listen": format_host_port(changed.host, changed.port),
        "lan": changed.lan,
    }


async def _peers(client: Client, params: Params) -> list[dict[str, Any]]:
    probe = params.optional_flag("probe")
    found = await client.peers(probe=True if probe is None else probe)
    return [peer_json(peer, client.display_name(peer.identity_key)) for peer in found]


async def _account_rename(client: Client, params: Params) -> dict[str, Any]:
    old, new = client.username, params.text("username")
    await client.rename(new)
    return {"old": old, "username": new}


async def _account_delete(client: Client, params: Params) -> dict[str, Any]:
    # The username the person typed to confirm: a call meant for another
    # profile (or a stale confirmation) deletes nothing.
    if params.text("username") != client.username:
        raise ClientError("not deleted: that is not your username")
    await client.delete_account()
    return {"username": client.username, "deleted": True}


async def _keys_status(client: Client, _: Params) -> dict[str, Any]:
    return keys_json(await client.key_status())


async def _keys_refresh(client: Client, _: Params) -> dict[str, Any]:
    return keys_json(await client.refresh_keys())


async def _devices(client: Client, _: Params) -> list[dict[str, Any]]:
    return [
        {
            "name": d.name,
            "device_key": d.device_key.hex(),
            "fingerprint": d.fingerprint,
            "current": d.current,
        }
        for d in await client.devices()
    ]


async def _link_request(client: Client, params: Params) -> dict[str, Any]:
    info = await client.link_request(params.text("code"))
    return {"name": info.name, "device_key": info.device_key.hex(), "fingerprint": info.fingerprint}


async def _approve_link(client: Client, params: Params) -> dict[str, Any]:
    history = bool(params.optional_flag("with_history"))
    groups = await client.approve_link(params.text("code"), with_history=history)
    return {"approved": True, "groups": groups}


async def _remove_device(client: Client, params: Params) -> dict[str, Any]:
    removed = await client.remove_device(params.text("name"))
    return {"name": removed.name, "device_key": removed.device_key.hex(), "removed": True}


#: Every method, by its JSON-RPC name (camelCase, as signal-cli's daemon names them).
METHODS: dict[str, Method] = {
    "whoami": Method(_whoami, online=False),
    "send": Method(_send, online=True),
    "receive": Method(_receive, online=True),
    "listGroups": Method(_list_groups, online=False),
    "createGroup": Method(_create_group, online=True),
    "renameGroup": Method(_rename_group, online=False),
    "members": Method(_members, online=True),
    "groupSuite": Method(_group_suite, online=False),
    "invite": Method(_invite, online=True),
    "remove": Method(_remove, online=True),
    "update": Method(_update, online=True),
    "leave": Method(_leave, online=True),
    "accept": Method(_accept, online=True),
    "decline": Method(_decline, online=True),
    "history": Method(_history, online=False),
    "outbox": Method(_outbox, online=False),
    "dropOutbox": Method(_drop_outbox, online=False),
    "contacts": Method(_contacts, online=False),
    "addContacts": Method(_add_contacts, online=True),
    "removeContact": Method(_remove_contact, online=False),
    "acceptKey": Method(_accept_key, online=False),
    "verify": Method(_verify, online=True),
    "block": Method(_block, online=True),
    "unblock": Method(_unblock, online=False),
    "invitePolicy": Method(_invite_policy, online=False),
    "defaultSuite": Method(_default_suite, online=False),
    "directDelivery": Method(_direct_delivery, online=False),
    "peers": Method(_peers, online=True),
    "keysStatus": Method(_keys_status, online=True),
    "keysRefresh": Method(_keys_refresh, online=True),
    "accountRename": Method(_account_rename, online=True),
    "accountDelete": Method(_account_delete, online=True),
    "devices": Method(_devices, online=True),
    "linkRequest": Method(_link_request, online=True),
    "approveLink": Method(_approve_link, online=True),
    "removeDevice": Method(_remove_device, online=True),
}
