"""Commands run in this process, when no ``qpq daemon`` runs for the profile.

Imported only on that path: it loads the library (the MLS binding,
SQLCipher, the QUIC stack), which a call to a daemon does without.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from qpq_client import Client, ServerAddress, Trust
from qpq_client.cli._errors import map_errors
from qpq_client.cli._methods import METHODS, InvalidParamsError, Params
from qpq_client.cli._render import emit, entry_json, entry_text
from qpq_proto.errors import ConnectionFailedError, UnavailableError

__all__ = ["Connect", "call_locally", "follow_locally", "run"]

_T = TypeVar("_T")


class Connect:
    """How a command in this process reaches the server (the global options)."""

    def __init__(
        self,
        *,
        server: str | None,
        ca_cert: str | None,
        pin: str | None,
        token: str | None,
        connect_timeout: float,
        p2p: bool | None,
    ) -> None:
        self.server = server
        self.ca_cert = ca_cert
        self.pin = pin
        self._token = token  # a secret: kept out of any repr
        self.connect_timeout = connect_timeout
        self.p2p = p2p

    def trust(self) -> Trust | None:
        if self.ca_cert is None and self.pin is None:
            return None
        return Trust.from_options(self.ca_cert, self.pin)

    def address(self) -> ServerAddress | None:
        return ServerAddress.parse(self.server) if self.server else None

    async def connect(self, client: Client, *, offline_ok: bool = False) -> None:
        await client.connect(
            server=self.address(),
            trust=self.trust(),
            token=self._token,
            connect_timeout=self.connect_timeout,
            p2p=self.p2p,
            offline_ok=offline_ok,
        )


def run(work: Callable[[], Awaitable[_T]]) -> _T:
    """Run ``work`` on an event loop, any failure reported as one line."""
    with map_errors():
        return asyncio.run(_awaited(work))
    raise AssertionError("unreachable")  # pragma: no cover - map_errors exits


async def _awaited(work: Callable[[], Awaitable[_T]]) -> _T:
    return await work()


def call_locally(
    home: Path, passphrase: Callable[[], str], connect: Connect, method: str, params: dict[str, Any]
) -> Any:
    """Open the profile, connect when the method needs the server, run it, close."""
    chosen = METHODS[method]

    async def work() -> Any:
        client = Client.open(home, passphrase())
        try:
            if chosen.online:
                await connect.connect(client)
            try:
                return await chosen.run(client, Params(params))
            except InvalidParamsError as error:
                raise click.UsageError(str(error)) from None
        finally:
            await client.close()

    return run(work)


def follow_locally(
    home: Path, passphrase: Callable[[], str], connect: Connect, as_json: bool
) -> None:
    """`qpq recv --follow` in this process: print each entry as it arrives."""

    async def work() -> None:
        client = Client.open(home, passphrase())
        try:
            # A server that cannot be reached at the start ends the command
            # with its reason; once following, a lost server (a restart, a
            # network change) is reached again, as the daemon does.
            await connect.connect(client)
            await _follow_across_losses(client, connect, as_json)
        finally:
            await client.close()

    run(work)


async def _follow_across_losses(client: Client, connect: Connect, as_json: bool) -> None:
    """Print each entry as it arrives; after a loss of the server, connect
    again with backoff and jitter (saying so on stderr) and go on."""
    from qpq_client.cli._daemon import Backoff  # noqa: PLC0415 - off the one-shot commands' path
    from qpq_client.cli._errors import message_for  # noqa: PLC0415

    backoff = Backoff(first=0.5, cap=30.0)
    while True:
        try:
            async for entry in client.follow():
                data = entry_json(entry)
                emit(as_json, data, entry_text(data, with_time=True))
        except (ConnectionFailedError, UnavailableError) as error:
            click.echo(f"qpq: {message_for(error)}; connecting again", err=True)
        while True:
            await client.disconnect()
            await asyncio.sleep(backoff.next_delay())
            try:
                await connect.connect(client)
            except (ConnectionFailedError, UnavailableError):
                continue
            backoff.reset()
            click.echo("qpq: connected again", err=True)
            break
