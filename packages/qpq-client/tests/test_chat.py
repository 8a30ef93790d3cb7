"""`qpq chat`, headless: the real screen (prompt_toolkit) fed keys through a pipe.

The chat runs in process over a real server, once with the profile opened
by the chat itself and once over a real `qpq daemon`; the other people are
library clients. Assertions are on the lines the screen draws.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from conftest import (
    NO_RATE_LIMIT,
    MakeUser,
    User,
    create_profile,
    group_of_two,
    run_in_own_loop,
    unique_name,
)
from daemon_harness import RunningDaemon
from prompt_toolkit.input import PipeInput, create_pipe_input
from prompt_toolkit.output import DummyOutput

from qpq_client import Client
from qpq_client.cli._chat import ChatScreen
from qpq_client.cli._chat_backend import Backend, DaemonBackend, LocalBackend
from qpq_client.cli._chat_state import ChatState
from qpq_client.cli._local import Connect
from qpq_server.testing import RunningServer, start_server

pytestmark = pytest.mark.slow

#: A message and a group name that try to drive the terminal: clear the
#: screen, set the window title, reverse the text direction.
HOSTILE_TEXT = "\x1b[2J\x1b]0;owned\x07hi\u202eevil"
HOSTILE_SHOWN = "\\x1b[2J\\x1b]0;owned\\x07hi\\u202eevil"
HOSTILE_GROUP = "\x1b[31mparty"
#: HH:MM, or a date before it for an older day.
_TIME = r"(\d{4}-\d\d-\d\d )?\d\d:\d\d"


def _connect() -> Connect:
    # The profile's stored server, pin and token, as `qpq chat` with no options.
    return Connect(server=None, ca_cert=None, pin=None, token=None, connect_timeout=5.0, p2p=None)


def _timeline(state: ChatState, group: str) -> list[str]:
    view = state.groups.get(group)
    return [] if view is None else [line.text for line in view.lines]


def _shows(group: str, pattern: str) -> Callable[[ChatState], bool]:
    return lambda state: any(re.fullmatch(pattern, line) for line in _timeline(state, group))


async def _until(screen: ChatScreen, shown: Callable[[ChatState], bool]) -> None:
    async with asyncio.timeout(30):
        await screen.wait_until(shown)


@contextlib.asynccontextmanager
async def _chat(backend: Backend) -> AsyncIterator[tuple[ChatScreen, PipeInput]]:
    """The chat's screen running over ``backend``, typed into through a pipe."""
    with create_pipe_input() as pipe:
        screen = ChatScreen(backend, input=pipe, output=DummyOutput())
        running = asyncio.ensure_future(screen.run())
        try:
            yield screen, pipe
            pipe.send_text("/quit\r")
            await asyncio.wait_for(running, 30)
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
            await backend.close()


def _receive_until(user: User, text: str) -> list[str]:
    async def receive(client: Client) -> list[str]:
        got: list[str] = []
        for _ in range(6):
            got += [f"{e.sender}: {e.body}" for e in await client.receive(wait=10)]
            if any(text in line for line in got):
                return got
        raise AssertionError(f"{user.name} never saw {text!r}; saw {got}")

    return user.library(receive)


def test_chat_sends_shows_accepts_and_defuses(make_user: MakeUser) -> None:
    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")
    a, b, c = alice.name, bob.name, carol.name
    group_of_two(alice, bob, "team")

    async def invite_alice(client: Client) -> None:
        await client.create_group(HOSTILE_GROUP)
        await client.invite(HOSTILE_GROUP, [a])

    async def scenario() -> None:
        backend = LocalBackend.open(alice.home, alice.passphrase, _connect())
        async with _chat(backend) as (screen, pipe):
            await _until(screen, lambda s: s.connected is True and s.selected == "team")
            # A message typed in the chat reaches bob; ours shows in the timeline.
            pipe.send_text("hello bob\r")
            await _until(screen, _shows("team", f"{_TIME} {a}: hello bob"))
            assert f"{a}: hello bob" in await asyncio.to_thread(_receive_until, bob, "hello bob")
            # Bob's answer shows as it arrives, with its time and sender; a
            # second line of it is indented, never a line of its own.
            await asyncio.to_thread(bob.library, lambda cl: cl.send("team", "hi alice\nme too"))
            await _until(screen, _shows("team", f"{_TIME} {b}: hi alice\n    me too"))
            # Multi-line paste (a bracketed paste) is one message.
            pipe.send_text("\x1b[200~first line\nsecond line\x1b[201~\r")
            await _until(screen, _shows("team", f"{_TIME} {a}: first line\n    second line"))
            got = await asyncio.to_thread(_receive_until, bob, "second line")
            assert f"{a}: first line\nsecond line" in got
            # An invitation from a stranger waits as a request, named hostile-ly.
            await asyncio.to_thread(carol.library, invite_alice)
            await _until(screen, lambda s: any(v.is_request for v in s.groups.values()))
            request = next(n for n, v in screen.state.groups.items() if v.is_request)
            listed = [line.text for line in screen.state.group_lines()]
            assert any("(inv) [1]" in line for line in listed), listed
            assert not any("\x1b" in line for line in listed), listed
            pipe.send_text(f"/accept {request}\r")
            await _until(screen, lambda s: s.status.startswith("joined "))
            joined = screen.state.selected
            assert joined is not None
            assert screen.state.groups[joined].state == "active"
            assert "\x1b" not in screen.state.title()
            assert "\\x1b[31mparty" in screen.state.title()
            # What a member sends is shown escaped, as `qpq recv` prints it.
            await asyncio.to_thread(carol.library, lambda cl: cl.send(HOSTILE_GROUP, HOSTILE_TEXT))
            await _until(
                screen, _shows(joined, f"{_TIME} {re.escape(c)}: {re.escape(HOSTILE_SHOWN)}")
            )
            # Commands answer in the timeline or the status bar, in one line.
            pipe.send_text("/members\r")
            await _until(screen, _shows(joined, f"{_TIME} -- members of .*{c}.*"))
            pipe.send_text("/join nosuch\r")
            await _until(
                screen,
                lambda s: s.status == "error: no group named 'nosuch' (/create NAME makes one)",
            )
            pipe.send_text(f"/safety {c}\r")
            await _until(
                screen,
                _shows(
                    joined,
                    rf"{_TIME} -- safety number with {c}: (\d{{5}} ){{11}}\d{{5}} \(not verified.*",
                ),
            )

    run_in_own_loop(scenario)


def test_chat_over_the_daemon(make_user: MakeUser) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    a, b = alice.name, bob.name
    group_of_two(alice, bob, "team")
    daemon = RunningDaemon(alice)
    try:
        daemon.wait_connected()

        async def scenario() -> None:
            backend = await DaemonBackend.open(alice.home)
            assert backend is not None
            async with _chat(backend) as (screen, pipe):
                await _until(screen, lambda s: s.connected is True and s.selected == "team")
                pipe.send_text("through the daemon\r")
                await _until(screen, _shows("team", f"{_TIME} {a}: through the daemon"))
                got = await asyncio.to_thread(_receive_until, bob, "through the daemon")
                assert f"{a}: through the daemon" in got
                await asyncio.to_thread(bob.library, lambda cl: cl.send("team", "answer"))
                await _until(screen, _shows("team", f"{_TIME} {b}: answer"))
                # Each shown once: the subscription and the history do not double it.
                lines = _timeline(screen.state, "team")
                assert sum(line.endswith(f"{a}: through the daemon") for line in lines) == 1
                assert sum(line.endswith(f"{b}: answer") for line in lines) == 1

        run_in_own_loop(scenario)
    finally:
        daemon.stop()


def test_a_chat_on_its_own_connects_again_after_a_server_restart(
    server: RunningServer, tmp_path: Path
) -> None:
    alice, bob = (User(unique_name(n), tmp_path / "homes" / n, server) for n in ("alice", "bob"))
    for user in (alice, bob):

        async def init(user: User = user) -> None:
            await (await create_profile(user.home, user.passphrase, user.name, server)).close()

        run_in_own_loop(init)
    group_of_two(alice, bob, "ops")
    again: list[RunningServer] = []

    def restart() -> None:
        run_dir = tmp_path / "again"
        run_dir.mkdir()
        listen = f"{server.host}:{server.port}"
        again.append(
            start_server(run_dir, data_dir=server.data_dir, listen=listen, extra_env=NO_RATE_LIMIT)
        )

    async def scenario() -> None:
        backend = LocalBackend.open(alice.home, alice.passphrase, _connect())
        async with _chat(backend) as (screen, pipe):
            await _until(screen, lambda s: s.connected is True and s.selected == "ops")
            assert await asyncio.to_thread(server.stop) == 0
            await _until(screen, lambda s: s.connected is False)
            assert screen.state.status.startswith("error: not connected: ")
            await asyncio.to_thread(restart)
            async with asyncio.timeout(120):
                await screen.wait_until(lambda s: s.connected is True)
            await asyncio.to_thread(bob.library, lambda cl: cl.send("ops", "after the restart"))
            await _until(screen, _shows("ops", f"{_TIME} {bob.name}: after the restart"))
            pipe.send_text("and back\r")
            got = await asyncio.to_thread(_receive_until, bob, "and back")
            assert f"{alice.name}: and back" in got

    try:
        run_in_own_loop(scenario)
    finally:
        for running in again:
            running.stop()


def test_the_timeline_scrolls_back_and_forward_within_its_ends() -> None:
    state = ChatState("alice")
    state.set_groups([{"name": "g", "state": "active", "members": ["alice", "bob"]}])
    entries = [
        {
            "group": "g",
            "kind": "text",
            "sender": "bob",
            "body": f"line {n}",
            "sent_at_ms": 0,
            "outgoing": False,
            "unconfirmed": False,
            "withdrawn": False,
        }
        for n in range(25)
    ]
    state.load_history("g", entries)
    state.scroll(10)
    assert state.timeline_lines()[-1].text.endswith("bob: line 14")
    assert state.title() == "g: alice, bob (scrolled back 10 lines: PageDown)"
    state.scroll(100)  # never past the first line
    assert [line.text[-6:] for line in state.timeline_lines()] == ["line 0"]
    state.scroll(-1000)  # nor past the newest
    assert state.timeline_lines()[-1].text.endswith("bob: line 24")
    assert state.title() == "g: alice, bob"
