"""JSON-RPC 2.0 with ``qpq daemon``: the wire, and the calling side the CLI uses.

One JSON object per line (UTF-8, ``\\n``-terminated) on a Unix socket in
the profile directory (docs/daemon.md). This module is the light side: the
standard library only, so that a ``qpq`` command that is a call to a
running daemon starts in a few tens of milliseconds instead of loading the
MLS binding, SQLCipher and the QUIC stack.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DAEMON_LOCK",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "MAX_LINE_BYTES",
    "METHOD_NOT_FOUND",
    "NOT_CONNECTED",
    "PARSE_ERROR",
    "QPQ_ERROR",
    "SOCKET_NAME",
    "DaemonGoneError",
    "DaemonLink",
    "RpcError",
    "connect_socket",
    "encode",
    "open_link",
]

#: The socket, in the profile directory.
SOCKET_NAME = "daemon.sock"
#: The lock a daemon holds for as long as it runs (flock): one per profile.
DAEMON_LOCK = "daemon.lock"
#: The longest line either side reads. A 5 MiB text JSON-escaped stays below
#: it; a longer line is refused and its connection closed, unread.
MAX_LINE_BYTES = 8 * 1024 * 1024

# JSON-RPC 2.0 §5.1 codes, then ours (the range -32000..-32099 is the
# implementation's).
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
#: A qpq error: ``data.type`` names its class, ``data.code`` a server's error code.
QPQ_ERROR = -32000
#: The daemon has no connection to the server right now (it is reconnecting).
NOT_CONNECTED = -32001

#: The longest path a sockaddr_un holds (Linux: 108 bytes with the NUL).
_SUN_PATH_MAX = 107


class RpcError(Exception):
    """A JSON-RPC error answer: ``message`` is the line the CLI prints."""

    def __init__(self, code: int, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data or {}


class DaemonGoneError(Exception):
    """The daemon closed the connection, or wrote something that is not JSON-RPC."""


def encode(message: dict[str, Any]) -> bytes:
    """One message as a line."""
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


@contextlib.contextmanager
def short_address(home: Path) -> Iterator[str]:
    """The socket's address, short enough for ``bind``/``connect`` wherever the profile lies.

    Its path, or when that is longer than a sockaddr_un holds, the same file
    reached through the directory's descriptor (``/proc/self/fd/N/daemon.sock``).
    """
    path = str(home / SOCKET_NAME)
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield path
        return
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{SOCKET_NAME}"
    finally:
        os.close(fd)


def connect_socket(home: Path, *, timeout: float | None = None) -> socket.socket | None:
    """A connected socket to the profile's daemon, or None when none listens there."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with short_address(home) as address:
            sock.connect(address)
    except OSError as error:
        sock.close()
        if error.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR):
            return None
        raise
    return sock


@dataclass
class DaemonLink:
    """A connection to a running daemon: calls, and the notifications of a subscription."""

    sock: socket.socket
    _file: Any = field(init=False, repr=False)
    _next_id: int = 0
    #: Notifications that arrived while a call waited for its answer.
    _early: collections.deque[dict[str, Any]] = field(default_factory=collections.deque)

    def __post_init__(self) -> None:
        self._file = self.sock.makefile("rb")

    def close(self) -> None:
        self._file.close()
        self.sock.close()

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Call ``method``; its result, or raises :class:`RpcError`."""
        self._next_id += 1
        request_id = self._next_id
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params:
            message["params"] = params
        self.sock.sendall(encode(message))
        while True:
            answer = self.read()
            if "id" not in answer:
                self._early.append(answer)  # a notification, before the answer
                continue
            if answer.get("id") != request_id:
                raise DaemonGoneError("the daemon answered another call")
            if "error" in answer:
                error = answer["error"]
                raise RpcError(int(error["code"]), str(error["message"]), error.get("data"))
            return answer.get("result")

    def read(self) -> dict[str, Any]:
        """The next message the daemon wrote."""
        line = self._file.readline(MAX_LINE_BYTES + 1)
        if not line:
            raise DaemonGoneError("the daemon closed the connection")
        try:
            message = json.loads(line)
        except ValueError:
            raise DaemonGoneError("the daemon wrote something that is not JSON") from None
        if not isinstance(message, dict):
            raise DaemonGoneError("the daemon wrote something that is not JSON-RPC")
        return message

    def notifications(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Each notification as (method, params), until the daemon closes the connection."""
        while True:
            if self._early:
                message = self._early.popleft()
            else:
                try:
                    message = self.read()
                except DaemonGoneError:
                    return
            method = message.get("method")
            if isinstance(method, str) and "id" not in message:
                params = message.get("params")
                yield method, params if isinstance(params, dict) else {}


def open_link(home: Path) -> DaemonLink | None:
    """A link to the daemon that runs for ``home``, or None when none runs."""
    sock = connect_socket(home)
    return None if sock is None else DaemonLink(sock)
