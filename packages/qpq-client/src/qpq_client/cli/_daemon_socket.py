"""The daemon's JSON-RPC socket: who may connect, and what each connection may make it hold.

The socket is a file of mode 0600 in the profile directory, and each
connection's peer is checked with ``SO_PEERCRED``: only the user the daemon
runs as is served (another local user is refused even where the file's
mode would let them in). Everything a connection can make the daemon hold
is bounded (docs/daemon.md, "Bounds"):

- a request line: :data:`~qpq_client.cli._rpc.MAX_LINE_BYTES`; a longer one
  is answered with an error and its connection closed, unread;
- requests are handled one at a time per connection, and the next is read
  only once the answer is queued and the queue has room: a client that
  sends without reading stalls itself, not the daemon;
- notifications queued for a connection: :data:`MAX_QUEUED_LINES` lines
  and :data:`MAX_QUEUED_BYTES` bytes; a subscriber that falls further
  behind is sent a ``dropped`` notice and disconnected;
- connections at once: :data:`MAX_CONNECTIONS`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from qpq_client.cli._rpc import (
    INVALID_REQUEST,
    MAX_LINE_BYTES,
    PARSE_ERROR,
    SOCKET_NAME,
    RpcError,
    encode,
    short_address,
)

__all__ = [
    "MAX_CONNECTIONS",
    "MAX_QUEUED_BYTES",
    "MAX_QUEUED_LINES",
    "Handler",
    "RpcPeer",
    "RpcSocket",
]

_log = logging.getLogger("qpq_client.daemon")

MAX_CONNECTIONS = 16
MAX_QUEUED_LINES = 1000
MAX_QUEUED_BYTES = 16 * 1024 * 1024
#: struct ucred (Linux): pid, uid, gid.
_UCRED = struct.Struct("3i")

#: Handles one call: (connection, method, params) -> result, or raises RpcError.
Handler = Callable[["RpcPeer", str, object], Awaitable[Any]]


class RpcPeer:
    """One connected client: its outgoing queue (bounded) and whether it subscribed."""

    def __init__(self, writer: asyncio.StreamWriter, name: str) -> None:
        self.name = name
        self.subscribed = False
        self._writer = writer
        self._lines: collections.deque[bytes] = collections.deque()
        self._bytes = 0
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self.closed = asyncio.Event()
        self._task = asyncio.ensure_future(self._write_queued())

    def _full(self) -> bool:
        return len(self._lines) >= MAX_QUEUED_LINES or self._bytes >= MAX_QUEUED_BYTES

    def answer(self, message: dict[str, Any]) -> None:
        """Queue an answer (the reader waits for room before it reads again)."""
        self._queue(encode(message))

    def notify(self, method: str, params: dict[str, Any]) -> None:
        """Queue a notification; a subscriber too far behind is dropped with a notice."""
        if self.closed.is_set():
            return
        if self._full():
            _log.warning("dropped subscriber %s: it did not read its notifications", self.name)
            self._lines.clear()
            self._bytes = 0
            notice = {
                "reason": f"more than {MAX_QUEUED_LINES} notifications or"
                f" {MAX_QUEUED_BYTES} bytes waited unread; subscribe again and catch up"
                " with history"
            }
            self._queue(encode({"jsonrpc": "2.0", "method": "dropped", "params": notice}))
            self.close_after_queued()
            return
        self._queue(encode({"jsonrpc": "2.0", "method": method, "params": params}))

    def _queue(self, line: bytes) -> None:
        self._lines.append(line)
        self._bytes += len(line)
        if self._full():
            self._room.clear()
        self._ready.set()

    async def room(self) -> None:
        await self._room.wait()

    def close_after_queued(self) -> None:
        self.subscribed = False
        self._lines.append(b"")  # the end: close once what is queued is written
        self._ready.set()

    async def _write_queued(self) -> None:
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                while self._lines:
                    line = self._lines.popleft()
                    if not line:
                        return
                    self._bytes -= len(line)
                    self._writer.write(line)
                    await self._writer.drain()
                    if not self._full():
                        self._room.set()
        except (ConnectionError, OSError):
            pass
        finally:
            self.subscribed = False
            self.closed.set()
            self._room.set()
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()

    async def close(self) -> None:
        self.close_after_queued()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await self.closed.wait()
        if not self.closed.is_set():
            # It does not read: drop what the transport still holds for it
            # (a plain close would keep that until the peer reads it).
            self._writer.transport.abort()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class RpcSocket:
    """The listening socket and its connections."""

    def __init__(self, home: Path, handler: Handler, *, uid: int | None = None) -> None:
        self._home = home
        #: The one user served: the daemon's own.
        self._uid = os.getuid() if uid is None else uid
        self._path = home / SOCKET_NAME
        self._handler = handler
        self._server: asyncio.Server | None = None
        self.peers: set[RpcPeer] = set()
        self._serving: set[asyncio.Task[None]] = set()
        self._count = 0

    async def start(self) -> None:
        """Listen (the caller holds the daemon lock, so a socket file left here is stale)."""
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()
        # Created with mode 0600 from the start: no moment when another user could connect.
        previous = os.umask(0o177)
        try:
            with short_address(self._home) as address:
                self._server = await asyncio.start_unix_server(
                    self._accepted, path=address, limit=MAX_LINE_BYTES
                )
        finally:
            os.umask(previous)
        os.chmod(self._path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for peer in list(self.peers):
            await peer.close()  # its reader then sees the end, and its task returns
        if self._serving:
            _, late = await asyncio.wait(self._serving, timeout=5.0)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()

    def subscribers(self) -> list[RpcPeer]:
        return [peer for peer in self.peers if peer.subscribed and not peer.closed.is_set()]

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._serving.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            if task is not None:
                self._serving.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        refusal = self._refusal(writer)
        self._count += 1
        peer = RpcPeer(writer, f"#{self._count}")
        if refusal is not None:
            _log.warning("refused connection %s: %s", peer.name, refusal)
            peer.answer(_error(None, INVALID_REQUEST, refusal))
            await peer.close()
            return
        self.peers.add(peer)
        try:
            await self._read_requests(reader, peer)
        finally:
            self.peers.discard(peer)
            await peer.close()

    def _refusal(self, writer: asyncio.StreamWriter) -> str | None:
        sock = writer.get_extra_info("socket")
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        except OSError:
            return "the peer's credentials cannot be read"
        _, uid, _ = _UCRED.unpack(raw)
        if uid != self._uid:
            return f"this daemon serves only its own user, not uid {uid}"
        if len(self.peers) >= MAX_CONNECTIONS:
            return f"{MAX_CONNECTIONS} connections are open already"
        return None

    async def _read_requests(self, reader: asyncio.StreamReader, peer: RpcPeer) -> None:
        while not peer.closed.is_set():
            await peer.room()
            try:
                line = await reader.readline()
            except ValueError:
                # Over the limit: the reader dropped what it held. Refuse and
                # close: reading on would mean reading the rest of the line.
                message = f"a request is at most {MAX_LINE_BYTES} bytes"
                peer.answer(_error(None, INVALID_REQUEST, message))
                return
            except (ConnectionError, OSError):
                return
            if not line:
                return
            if not line.strip():
                continue
            await self._handle(peer, line)

    async def _handle(self, peer: RpcPeer, line: bytes) -> None:
        try:
            request = json.loads(line)
        except ValueError:
            peer.answer(_error(None, PARSE_ERROR, "not JSON"))
            return
        request_id = request.get("id") if isinstance(request, dict) else None
        if not isinstance(request_id, str | int | None) or isinstance(request_id, bool):
            request_id = None
        if (
            not isinstance(request, dict)
            or request.get("jsonrpc") != "2.0"
            or not isinstance(request.get("method"), str)
        ):
            why = "batches are not supported" if isinstance(request, list) else "not JSON-RPC 2.0"
            peer.answer(_error(request_id, INVALID_REQUEST, why))
            return
        try:
            result = await self._handler(peer, request["method"], request.get("params"))
        except RpcError as error:
            if "id" in request:
                peer.answer(_error(request_id, error.code, error.message, error.data))
            return
        if "id" in request:  # JSON-RPC 2.0 §4.1: a notification is not answered
            peer.answer({"jsonrpc": "2.0", "id": request_id, "result": result})


def _error(
    request_id: object, code: int, message: str, data: dict[str, Any] | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}
