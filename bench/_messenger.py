"""What the workload needs from a system under test: rooms, a send, receive loops."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from bench._measure import Inbox


@dataclass(frozen=True, slots=True)
class Room:
    """A conversation: one sender (its owner, who never runs a receive loop) and receivers.

    ``receivers`` are the names the receive loops report to the inbox.
    """

    name: str
    receivers: tuple[str, ...]


class Messenger(Protocol):
    """One system under test, driven through its client library in this process.

    Receivers are a pool (``r0``, ``r1``, ...), each with one receive loop
    reporting every message it yields to :attr:`inbox`; a room takes a range
    of that pool, so the same receivers serve several rooms.
    """

    name: str
    #: Sends one sender may have in flight through the library's public API.
    max_in_flight: int
    inbox: Inbox

    @property
    def server_pid(self) -> int: ...

    @property
    def settings(self) -> str:
        """How the server is configured, for the report."""
        ...

    async def room(self, name: str, receivers: range) -> Room:
        """The room ``name`` (created on first use) with receivers ``r{i}`` for i in the range."""
        ...

    async def send(self, room: Room, text: str) -> None: ...

    async def calls(self) -> dict[str, float] | None:
        """Calls the server handled so far, by kind, where the server counts them."""
        ...

    async def refresh(self) -> None:
        """After set-up, before anything is timed: make senders that sat idle ready to send."""
        ...

    def check(self) -> None:
        """Raise if a receive loop died (its deliveries would silently stop)."""
        ...


def check_loops(loops: list[asyncio.Task[None]]) -> None:
    """Raise the failure of a receive loop that ended with one."""
    for loop in loops:
        if loop.done() and not loop.cancelled() and loop.exception() is not None:
            raise RuntimeError(f"{loop.get_name()} failed") from loop.exception()


async def stop_loops(loops: list[asyncio.Task[None]]) -> None:
    """Cancel the receive loops and wait until each has ended."""
    for loop in loops:
        loop.cancel()
    await asyncio.gather(*loops, return_exceptions=True)
