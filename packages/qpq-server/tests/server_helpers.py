"""Helpers shared by the server tests (imported by name: tests run in prepend mode)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import qpq_core
from qpq_proto import Request
from qpq_server._accounts import AccountState, Status
from qpq_server._context import ConnectionState
from qpq_server._dispatch import Answer, Dispatcher, PendingAnswer
from qpq_server.testing import CallClient, RunningServer


def proven(identity_key: bytes) -> ConnectionState:
    """A connection state as Authenticate leaves it for an identity with an active account."""
    return ConnectionState(
        peer=None, identity=identity_key, account=AccountState(identity_key, Status.ACTIVE)
    )


async def answer_of(
    dispatcher: Dispatcher, request: Request, connection: ConnectionState
) -> Answer:
    """What the transport sends for ``request``: the answer now, or once its handler is done."""
    answer = dispatcher.start(request, connection)
    return await answer.wait() if isinstance(answer, PendingAnswer) else answer


@asynccontextmanager
async def authed(
    server: RunningServer, identity: qpq_core.Identity, *, register: bool = True
) -> AsyncIterator[CallClient]:
    """A connection that has proven ``identity``; with ``register``, for an
    account (registered under a name made from its key if it had none)."""
    async with server.connect() as client:
        await client.authenticate(identity, register=register)
        yield client


def key_packages(
    identity: qpq_core.Identity, count: int, *, last_resort: bool = False
) -> tuple[bytes, ...]:
    return tuple(
        qpq_core.MlsClient(identity).create_key_packages(count, last_resort=last_resort).packages
    )


def varint(n: int) -> bytes:
    # RFC 9420 §2.1.2 variable-length integer.
    if n < 64:
        return bytes([n])
    if n < 16384:
        return (0x4000 | n).to_bytes(2, "big")
    return (0x8000_0000 | n).to_bytes(4, "big")


def resigned_with_ciphersuite(identity: qpq_core.Identity, package: bytes, suite: int) -> bytes:
    """``package`` with another ciphersuite id, correctly re-signed (RFC 9420 §10).

    The MLSMessage header is 4 bytes; the last field is the 64-byte signature
    with a 2-byte length prefix; the KeyPackageTBS is everything between.
    """
    tbs = bytearray(package[4:-66])
    tbs[2:4] = suite.to_bytes(2, "big")
    label = b"MLS 1.0 KeyPackageTBS"
    content = varint(len(label)) + label + varint(len(tbs)) + bytes(tbs)
    return package[:4] + bytes(tbs) + b"\x40\x40" + identity.sign(content)
