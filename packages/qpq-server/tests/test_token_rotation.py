"""Rotating the access token: ``auth_token_next`` beside ``auth_token``, SIGHUP re-reads them."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

import qpq_core
from qpq_proto.errors import UnauthenticatedError
from qpq_server import ServerConfig
from qpq_server._checks import Severity, check_config
from qpq_server.testing import TEST_TOKEN, RunningServer, start_server

pytestmark = pytest.mark.slow

NEW_TOKEN = "Zx3Rb8Kq1Wm6Tn4Yh9Pd2Lc7Vf5Gs0Ja8Eu3Io6Nk"


async def _works(server: RunningServer, token: str) -> bool:
    """Whether a connection with ``token`` may prove an identity."""
    async with server.connect(token=token) as client:
        try:
            await client.authenticate(qpq_core.Identity.generate())
        except UnauthenticatedError:
            return False
    return True


def _await_log(server: RunningServer, text: str, count: int, timeout: float = 20.0) -> None:
    """Return once the server has logged ``text`` ``count`` times (a real event, a deadline)."""
    deadline = time.monotonic() + timeout
    while server.log().count(text) < count:
        assert server.process.poll() is None, server.log()
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.02)


async def test_both_tokens_work_during_the_window_then_only_the_new_one(tmp_path: Path) -> None:
    current = tmp_path / "token"
    upcoming = tmp_path / "token-next"
    current.write_text(TEST_TOKEN + "\n")
    upcoming.write_text("")  # empty: no rotation under way
    server = start_server(
        tmp_path,
        token=None,
        extra_env={"QPQ_AUTH_TOKEN_FILE": str(current), "QPQ_AUTH_TOKEN_NEXT_FILE": str(upcoming)},
    )
    try:
        assert await _works(server, TEST_TOKEN)
        assert not await _works(server, NEW_TOKEN)

        # The window opens: the new token is accepted beside the old one.
        upcoming.write_text(NEW_TOKEN + "\n")
        server.process.send_signal(signal.SIGHUP)
        _await_log(server, "reloaded the access tokens: 2 accepted", 1)
        assert await _works(server, TEST_TOKEN)
        assert await _works(server, NEW_TOKEN)
        assert not await _works(server, "Qw8Er5Ty2Ui9Op6As3Df0Gh7Jk4Lz1Xc8Vb5Nm2Pq")

        # The window closes: the old value is gone.
        current.write_text(NEW_TOKEN + "\n")
        upcoming.write_text("")
        server.process.send_signal(signal.SIGHUP)
        _await_log(server, "reloaded the access tokens: 1 accepted", 1)
        assert not await _works(server, TEST_TOKEN)
        assert await _works(server, NEW_TOKEN)
    finally:
        assert server.stop() == 0
    log = server.log()
    assert TEST_TOKEN not in log
    assert NEW_TOKEN not in log


async def test_a_refused_reload_keeps_the_tokens_in_use(tmp_path: Path) -> None:
    current = tmp_path / "token"
    upcoming = tmp_path / "token-next"
    current.write_text(TEST_TOKEN)
    upcoming.write_text("")
    server = start_server(
        tmp_path,
        token=None,
        extra_env={"QPQ_AUTH_TOKEN_FILE": str(current), "QPQ_AUTH_TOKEN_NEXT_FILE": str(upcoming)},
    )
    try:
        # A next token with no current one is a mistake: nothing changes.
        current.write_text("")
        upcoming.write_text(NEW_TOKEN)
        server.process.send_signal(signal.SIGHUP)
        _await_log(server, "reload refused, the access tokens are unchanged", 1)
        assert await _works(server, TEST_TOKEN)
        assert not await _works(server, NEW_TOKEN)
    finally:
        assert server.stop() == 0


async def test_restart_with_both_tokens_then_with_the_new_one(tmp_path: Path) -> None:
    server = start_server(tmp_path, extra_env={"QPQ_AUTH_TOKEN_NEXT": NEW_TOKEN})
    try:
        assert await _works(server, TEST_TOKEN)
        assert await _works(server, NEW_TOKEN)
    finally:
        assert server.stop() == 0
    after = start_server(tmp_path, token=NEW_TOKEN, data_dir=server.data_dir)
    try:
        assert not await _works(after, TEST_TOKEN)
        assert await _works(after, NEW_TOKEN)
    finally:
        assert after.stop() == 0


def test_a_next_token_without_a_current_one_is_refused() -> None:
    problems = check_config(ServerConfig(auth_token_next=NEW_TOKEN))
    assert any(p.setting == "auth_token_next" and p.severity is Severity.ERROR for p in problems)
    weak = check_config(
        ServerConfig(production=True, auth_token=TEST_TOKEN, auth_token_next="devtoken")
    )
    assert any(p.setting == "auth_token_next" and p.severity is Severity.ERROR for p in weak)
    assert NEW_TOKEN not in repr(ServerConfig(auth_token=TEST_TOKEN, auth_token_next=NEW_TOKEN))
