"""Where `qpq chat` gets its data: the profile's daemon, or a client in this process.

Both call the methods of :mod:`qpq_client.cli._methods` by their JSON-RPC
names and hand over the same JSON, so the chat cannot tell them apart:

- :class:`DaemonBackend` speaks JSON-RPC to ``qpq daemon`` on its socket
  (asyncio, one line per message) and turns the subscription's
  notifications into events;
- :class:`LocalBackend` opens the profile itself and runs
  ``Client.follow()`` beside the calls, as the daemon does.

An event is ``(kind, params)``: ``entry`` (a history entry, ours included),
``connection`` (``{"connected", "reason"}``), ``keyChanged`` or ``ended``
(the source is gone; ``reason`` says why).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from qpq_client.cli._render import sent_entry_json
from qpq_client.cli._rpc import MAX_LINE_BYTES, encode, short_address

if TYPE_CHECKING:
    from qpq_client import Client
    from qpq_client.cli._local import Connect

__all__ = ["Backend", "CallFailedError", "DaemonBackend", "Event", "LocalBackend"]

Event = tuple[str, dict[str, Any]]
#: Notifications that carry a history entry.
_ENTRY_NOTIFICATIONS = ("message", "event", "request")


class CallFailedError(Exception):
    """A call failed: ``str(error)`` is the one line the CLI would print."""


class Backend(Protocol):
    """What the chat needs of its source."""

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Run a method; its JSON result, or raises :class:`CallFailedError`."""
        ...

    async def next_event(self) -> Event:
        """The next event (waits for one)."""
        ...

    async def close(self) -> None:
        """Let go of the daemon or the profile."""
        ...


class DaemonBackend:
    """The chat over ``qpq daemon``'s socket: calls, and a subscription."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._reading = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, home: Path) -> DaemonBackend | None:
        """Subscribed to the daemon of ``home``; None when none listens there."""
        try:
            with short_address(home) as address:
                reader, writer = await asyncio.open_unix_connection(
                    address, limit=MAX_LINE_BYTES + 1
                )
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        backend = cls(reader, writer)
        subscribed = await backend.call("subscribe")
        for entry in subscribed["entries"]:
            backend._events.put_nowait(("entry", entry))
        backend._events.put_nowait(("connection", {"connected": subscribed["connected"]}))
        return backend

    async def _read(self) -> None:
        reason = "the daemon closed the connection (qpq daemon status)"
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                message = json.loads(line)
                if not isinstance(message, dict):
                    reason = "the daemon wrote something that is not JSON-RPC"
                    break
                if "id" in message:
                    waiting = self._waiting.pop(message["id"], None)
                    if waiting is not None and not waiting.done():
                        waiting.set_result(message)
                    continue
                method, params = message.get("method"), message.get("params")
                params = params if isinstance(params, dict) else {}
                if method in _ENTRY_NOTIFICATIONS:
                    self._events.put_nowait(("entry", params))
                elif method == "dropped":
                    reason = f"the daemon dropped this chat: {params.get('reason')}"
                elif isinstance(method, str):
                    self._events.put_nowait((method, params))
        except (OSError, ValueError) as error:
            reason = f"the daemon's connection failed: {error}"
        for waiting in self._waiting.values():
            if not waiting.done():
                waiting.set_exception(CallFailedError(reason))
        self._waiting.clear()
        self._events.put_nowait(("ended", {"reason": reason}))

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        if self._reading.done():
            raise CallFailedError("the daemon is gone (qpq daemon status)")
        self._next_id += 1
        request: dict[str, Any] = {"jsonrpc": "2.0", "id": self._next_id, "method": method}
        if params:
            request["params"] = params
        answered = asyncio.get_running_loop().create_future()
        self._waiting[self._next_id] = answered
        try:
            self._writer.write(encode(request))
            await self._writer.drain()
        except OSError as error:
            self._waiting.pop(self._next_id, None)
            raise CallFailedError(f"the daemon could not be reached: {error}") from None
        answer = await answered
        if "error" in answer:
            # The error's message is the line the CLI prints (docs/daemon.md, "Errors").
            raise CallFailedError(str(answer["error"]["message"]))
        return answer.get("result")

    async def next_event(self) -> Event:
        return await self._events.get()

    async def close(self) -> None:
        self._reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reading
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


class LocalBackend:
    """The chat with the profile open in this process (no daemon runs for it)."""

    def __init__(self, client: Client, connect: Connect) -> None:
        self._client = client
        self._connect = connect
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._following: asyncio.Task[None] | None = None

    @classmethod
    def open(cls, home: Path, passphrase: str, connect: Connect) -> LocalBackend:
        """The profile opened (not connected yet: :meth:`start` connects)."""
        from qpq_client import Client  # noqa: PLC0415 - the daemon path loads no library

        return cls(Client.open(home, passphrase), connect)

    def start(self) -> None:
        """Connect and follow, in the background; the outcome arrives as events."""
        self._following = asyncio.ensure_future(self._follow())

    async def _follow(self) -> None:
        # As the daemon does (cli/_daemon.py): connect, follow, and after a
        # loss connect again with backoff and jitter; a setting to fix (the
        # trust, the token) ends it at the first try.
        from qpq_client import TrustNotConfiguredError, UnauthenticatedError  # noqa: PLC0415
        from qpq_client.cli._daemon import Backoff  # noqa: PLC0415
        from qpq_client.cli._errors import message_for  # noqa: PLC0415
        from qpq_client.cli._render import entry_json  # noqa: PLC0415

        backoff = Backoff(first=0.5, cap=30.0)
        first = True
        while True:
            try:
                await self._connect_to_server()
                self._events.put_nowait(("connection", {"connected": True}))
                backoff.reset()
                async for entry in self._client.follow():
                    self._events.put_nowait(("entry", entry_json(entry)))
            except Exception as error:  # noqa: BLE001 - shown in the status bar; tried again
                reason = message_for(error)
                self._events.put_nowait(("connection", {"connected": False, "reason": reason}))
                if first and isinstance(error, TrustNotConfiguredError | UnauthenticatedError):
                    return
            first = False
            await self._client.disconnect()
            await asyncio.sleep(backoff.next_delay())

    async def _connect_to_server(self) -> None:
        from qpq_proto.errors import ConnectionFailedError  # noqa: PLC0415

        await self._connect.connect(self._client)
        if not self._client.online:
            # With direct delivery on, connect() opens without the server;
            # the follow loop is what connects again, so it goes round.
            raise ConnectionFailedError("the server cannot be reached")

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        from qpq_client.cli._errors import message_for  # noqa: PLC0415
        from qpq_client.cli._methods import METHODS, Params  # noqa: PLC0415

        chosen = METHODS.get(method)
        if chosen is None:
            raise CallFailedError(f"no method {method!r}")
        try:
            result = await chosen.run(self._client, Params(params))
        except Exception as error:  # noqa: BLE001 - the boundary: one line for the status bar
            raise CallFailedError(message_for(error)) from None
        if method == "send":
            # What we sent is in our history, shown already: the follow loop
            # never hands it over, so the chat is told here (the daemon
            # notifies its subscribers the same way).
            sent = params or {}
            own = sent_entry_json(self._client.username, sent["group"], sent["text"])
            self._events.put_nowait(("entry", own))
        return result

    async def next_event(self) -> Event:
        return await self._events.get()

    async def close(self) -> None:
        if self._following is not None:
            self._following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._following
        await self._client.close()
