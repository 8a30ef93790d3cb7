"""Calls before auth is set up raise a typed error; the CLI says so in one line.

Without a proven identity the client raises UnauthenticatedError itself,
before sending; before connect() it raises NotConnectedError. The access
token is an optional gate of the server: without one the client still
connects (and a server that wants one answers ``unauthenticated``).

No server is needed: the refusal must come before anything is sent.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import qpq_command

import qpq_proto as p
from qpq_client import Client, NotConnectedError, UnauthenticatedError
from qpq_client._connection import Connection
from qpq_client._state import StateStore
from qpq_core import Identity
from qpq_proto.errors import ConnectionFailedError

PASSPHRASE = "pw"
#: Nothing listens there: if the client tried to connect, the error would differ.
NOWHERE = "127.0.0.1:9"


def offline_profile(home: Path) -> Path:
    """A profile whose `init` stored a server and trust but no token."""
    store = StateStore.open(home, PASSPHRASE, create=True)
    with store.transaction() as tx:
        tx.set_identity(Identity.generate().secret_bytes(), "alice")
        tx.set_setting("server", NOWHERE)
        tx.set_setting("trust", "pin:" + "0" * 64)
    store.close()
    return home


class UnusedTransport:
    """A transport that fails the test if a call reaches it."""

    def __init__(self) -> None:
        self.calls: list[p.Request] = []

    async def call(self, request: p.Request, *, answer_within: float) -> p.Response:
        self.calls.append(request)
        return p.UserKey(b"k" * 32)

    async def close(self) -> None:
        pass

    @property
    def closed_reason(self) -> str | None:
        return None


async def test_connect_without_a_token_tries_the_server(tmp_path: Path) -> None:
    # A server without a token admits by account alone: no token is no reason
    # not to connect (nothing listens here, so connecting is what fails).
    client = Client.open(offline_profile(tmp_path), PASSPHRASE)
    try:
        with pytest.raises(ConnectionFailedError, match="no answer from"):
            await client.connect(connect_timeout=0.5)
    finally:
        await client.close()


async def test_every_network_call_before_connect_raises(tmp_path: Path) -> None:
    client = Client.open(offline_profile(tmp_path), PASSPHRASE)
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "create_group": lambda: client.create_group("g"),
        "invite": lambda: client.invite("g", ["bob"]),
        "remove": lambda: client.remove("g", ["bob"]),
        "leave": lambda: client.leave("g"),
        "update": lambda: client.update("g"),
        "send": lambda: client.send("g", "hi"),
        "receive": client.receive,
        "members": lambda: client.members("g"),
        "key_status": client.key_status,
        "refresh_keys": client.refresh_keys,
    }
    try:
        for name, call in calls.items():
            with pytest.raises(NotConnectedError, match="connect"):
                await call()
            assert client.groups() == [], name  # nothing was half-done
        with pytest.raises(NotConnectedError):
            await anext(client.follow())
    finally:
        await client.close()


async def test_connection_without_an_identity_sends_nothing() -> None:
    transport = UnusedTransport()
    no_token = Connection(transport, "")
    with pytest.raises(UnauthenticatedError, match="authenticate first"):
        await no_token.fetch(10)
    assert transport.calls == []
    # Without a token a call goes out with none: the server decides.
    assert await no_token.resolve_user("bob") == b"k" * 32
    assert [request.token for request in transport.calls] == [""]
    transport.calls.clear()

    unproven = Connection(transport, "a-token")
    identity_bound: dict[str, Callable[[], Awaitable[Any]]] = {
        "fetch": lambda: unproven.fetch(10),
        "fetch_wait": lambda: unproven.fetch_wait(10, 100),
        "ack": lambda: unproven.ack(1),
        "publish": lambda: unproven.publish(b"g" * 16, 0, p.MessageKind.APPLICATION, b"x"),
        "create_group": lambda: unproven.create_group(b"group-info"),
        "fetch_group_info": lambda: unproven.fetch_group_info(b"g" * 16),
        "register_user": lambda: unproven.register_user("alice"),
        "count_key_packages": unproven.count_key_packages,
        "upload_key_packages": lambda: unproven.upload_key_packages((b"kp",)),
        "fetch_key_package": lambda: unproven.fetch_key_package(b"k" * 32),
    }
    for name, call in identity_bound.items():
        with pytest.raises(UnauthenticatedError, match="authenticate first"):
            await call()
        assert transport.calls == [], name
    # A call that acts for no identity goes through once the token is there.
    assert await unproven.resolve_user("bob") == b"k" * 32
    assert len(transport.calls) == 1


def test_cli_without_a_token_prints_one_line(tmp_path: Path) -> None:
    home = offline_profile(tmp_path / "home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("QPQ_")}
    env.update(QPQ_HOME=str(home), QPQ_STATE_KEY=PASSPHRASE)
    for args in (("send", "g", "hi"), ("--token", "", "recv"), ("keys", "status")):
        done = subprocess.run(
            [*qpq_command(), "--connect-timeout", "0.5", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 1, args
        assert done.stdout == ""
        lines = done.stderr.splitlines()
        assert len(lines) == 1, args
        assert lines[0].startswith("qpq: error: no answer from the server at 127.0.0.1:9"), lines


def test_cli_options_keep_the_token_out_of_their_repr(tmp_path: Path) -> None:
    from qpq_client.cli._main import Options

    opts = Options(tmp_path, "h:1", None, "0" * 64, "tok-do-not-show", False, 1.0)
    assert "tok-do-not-show" not in repr(opts)
    assert opts.token == "tok-do-not-show"
