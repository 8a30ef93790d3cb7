"""The commands typed in `qpq chat`'s input line (``/accept``, ``/members``, ...).

Each is a method call of :mod:`qpq_client.cli._methods` through the
chat's backend; what it answers lands in the :class:`ChatState` (a notice
in the timeline, or one line in the status bar).
"""

from __future__ import annotations

import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from qpq_client.cli._chat_backend import Backend, CallFailedError
from qpq_client.cli._chat_state import ChatState
from qpq_client.cli._render import printable

__all__ = ["COMMANDS", "QuitChat", "run_input"]


class QuitChat(Exception):
    """``/quit``: the chat ends."""


class _UsageError(Exception):
    """A command typed wrong: its one line goes to the status bar."""


@dataclass(frozen=True)
class _Command:
    usage: str
    help: str
    run: Callable[[Backend, ChatState, list[str]], Awaitable[None]]


def _group_arg(state: ChatState, args: list[str], usage: str) -> str:
    if args:
        return args[0]
    if state.selected is None:
        raise _UsageError(f"no group selected: {usage}")
    return state.selected


async def refresh_groups(backend: Backend, state: ChatState) -> None:
    """List the groups again; load the history of those that are new."""
    listed = await backend.call("listGroups")
    for name in state.set_groups(listed["groups"]):
        state.load_history(name, await backend.call("history", {"group": name}))


async def _help(_: Backend, state: ChatState, __: list[str]) -> None:
    for command in COMMANDS.values():
        state.notice(f"{command.usage:<22} {command.help}")
    state.notice("Enter sends; Alt+Enter (or Esc, Enter): a new line; Ctrl+N/Ctrl+P: groups")
    state.notice("PageUp/PageDown: the timeline; //text sends text that starts with /")


async def _join(backend: Backend, state: ChatState, args: list[str]) -> None:
    if len(args) != 1:
        raise _UsageError("usage: /join GROUP")
    if args[0] not in state.groups:
        await refresh_groups(backend, state)
    if args[0] not in state.groups:
        raise _UsageError(f"no group named {printable(args[0])!r} (/create NAME makes one)")
    state.select(args[0])
    if state.groups[args[0]].is_request:
        state.status = f"{printable(args[0])} is an invitation: /accept or /decline"


async def _accept(backend: Backend, state: ChatState, args: list[str]) -> None:
    group = _group_arg(state, args, "/accept GROUP")
    joined = await backend.call("accept", {"group": group})
    await refresh_groups(backend, state)
    name = joined["name"]
    if name in state.groups:
        state.select(name)
        state.load_history(name, await backend.call("history", {"group": name}))
    state.status = f"joined {printable(name)}"


async def _decline(backend: Backend, state: ChatState, args: list[str]) -> None:
    group = _group_arg(state, args, "/decline GROUP")
    await backend.call("decline", {"group": group})
    await refresh_groups(backend, state)
    state.status = f"declined {printable(group)}"


async def _members(backend: Backend, state: ChatState, args: list[str]) -> None:
    group = _group_arg(state, args, "/members GROUP")
    members = await backend.call("members", {"group": group})
    state.notice(f"members of {group}: {', '.join(members)}")


async def _safety(backend: Backend, state: ChatState, args: list[str]) -> None:
    if len(args) != 1:
        raise _UsageError("usage: /safety NAME")
    data = await backend.call("verify", {"username": args[0], "mark": False})
    digits = data["safety_number"]
    grouped = " ".join(digits[i : i + 5] for i in range(0, len(digits), 5))
    verified = "verified" if data["verified"] else "not verified: /verify NAME if it matches"
    state.notice(f"safety number with {args[0]}: {grouped} ({verified})")


async def _verify(backend: Backend, state: ChatState, args: list[str]) -> None:
    if len(args) != 1:
        raise _UsageError("usage: /verify NAME")
    await backend.call("verify", {"username": args[0], "mark": True})
    state.status = f"{printable(args[0])} is marked verified"


async def _create(backend: Backend, state: ChatState, args: list[str]) -> None:
    if len(args) != 1:
        raise _UsageError("usage: /create NAME")
    created = await backend.call("createGroup", {"name": args[0]})
    await refresh_groups(backend, state)
    state.select(created["name"])
    state.status = f"created {printable(created['name'])}"


async def _invite(backend: Backend, state: ChatState, args: list[str]) -> None:
    if not args:
        raise _UsageError("usage: /invite NAME...")
    group = _group_arg(state, [], "/join GROUP first")
    result = await backend.call("invite", {"group": group, "usernames": args})
    added = ", ".join(result["added"])
    state.status = f"invited {printable(added)}" if added else "everyone is a member already"


async def _leave(backend: Backend, state: ChatState, args: list[str]) -> None:
    group = _group_arg(state, args, "/leave GROUP")
    await backend.call("leave", {"group": group})
    await refresh_groups(backend, state)
    state.status = f"leaving {printable(group)}"


async def _quit(_: Backend, __: ChatState, ___: list[str]) -> None:
    raise QuitChat


COMMANDS: dict[str, _Command] = {
    "/help": _Command("/help", "this list", _help),
    "/join": _Command("/join GROUP", "show GROUP", _join),
    "/accept": _Command("/accept [GROUP]", "accept the invitation", _accept),
    "/decline": _Command("/decline [GROUP]", "decline the invitation", _decline),
    "/members": _Command("/members [GROUP]", "list the members", _members),
    "/safety": _Command("/safety NAME", "the safety number you share with NAME", _safety),
    "/verify": _Command("/verify NAME", "mark NAME verified (the numbers matched)", _verify),
    "/create": _Command("/create NAME", "create a group", _create),
    "/invite": _Command("/invite NAME...", "add people to this group", _invite),
    "/leave": _Command("/leave [GROUP]", "leave the group", _leave),
    "/quit": _Command("/quit", "leave the chat (Ctrl+D too)", _quit),
}


async def run_input(backend: Backend, state: ChatState, text: str) -> None:
    """What the input line submitted: a command, or a message to the selected group.

    Raises:
        QuitChat: ``/quit``.
    """
    if not text.strip():
        return
    # "//text" sends "/text"; a line that starts with "/ " or is only "/" is text too.
    if text.startswith("/") and not text.startswith("//") and text[1:2].strip():
        await _command(backend, state, text)
        return
    if text.startswith("//"):
        text = text[1:]
    view = state.current()
    if view is None:
        state.error("no group to send to: /create NAME or wait for an invitation")
        return
    if view.is_request:
        state.error(f"{view.name} is an invitation: /accept or /decline first")
        return
    try:
        await backend.call("send", {"group": view.name, "text": text})
    except CallFailedError as error:
        state.error(str(error))
        return
    state.status = ""


async def _command(backend: Backend, state: ChatState, text: str) -> None:
    try:
        words = shlex.split(text)
    except ValueError as error:
        state.error(f"{error} in the command")
        return
    command = COMMANDS.get(words[0])
    if command is None:
        state.error(f"no command {words[0]} (/help lists them; //text sends text starting with /)")
        return
    try:
        await command.run(backend, state, words[1:])
    except (CallFailedError, _UsageError) as error:
        state.error(str(error))
