"""What every incoming connection of a listener shares: identity, state, host, caps.

The host's receiver is called here, one message at a time, in a task that
a reset stream or a closed connection does not cancel.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from qpq_p2p._certificate import DeviceCertificate
from qpq_p2p._config import PeerConfig
from qpq_p2p._delivery import DirectMessage, Receiver
from qpq_p2p._errors import DeliveryDeferredError
from qpq_p2p._groups import GroupRosters
from qpq_p2p._proof import ListenerGate, Signer
from qpq_proto import Done, ErrorResponse, Response
from qpq_proto.errors import InternalError, ServiceError, UnavailableError
from qpq_proto.quic import ReceiveBudget

__all__ = ["ListenerHub"]

_log = logging.getLogger("qpq_p2p")


class Connection(Protocol):
    """An incoming connection, as the hub closes it."""

    def close_with_reason(self, code: int, reason: str) -> None:
        """Close the connection, telling the peer why."""
        ...

    @property
    def evictable(self) -> bool:
        """Counted by :meth:`ListenerHub.admit`, open, and no identity proven yet."""
        ...

    def evict(self) -> None:
        """Stop counting the connection and close it: a newer one takes its place."""
        ...


class ListenerHub:
    """What every incoming connection shares: identity, state, host, caps."""

    def __init__(
        self,
        identity: Signer,
        groups: GroupRosters,
        certificate: DeviceCertificate,
        receive: Receiver,
        config: PeerConfig,
    ) -> None:
        self.identity = identity
        self.groups = groups
        self.certificate = certificate
        self.config = config
        self.budget = ReceiveBudget(config.receive_budget_bytes)
        #: Every open incoming connection, oldest first.
        self.protocols: dict[Connection, None] = {}
        self.accepting = True
        self._receive = receive
        self._admitted = 0
        self._by_address: dict[str, int] = {}
        # One host call at a time: a host processes its messages in order.
        self._deliveries = asyncio.Lock()
        self._host_tasks: set[asyncio.Task[Response]] = set()

    def gate(self) -> ListenerGate:
        """The gate of a new connection."""
        return ListenerGate(self.identity, self.groups, self.certificate.fingerprint)

    def admit(self, address: str) -> str | None:
        """Count a new connection from ``address``; the refusal reason if over a cap.

        When every slot is taken, the oldest connection that has not proven
        an identity makes room: refusing the newcomer instead would let a
        few source addresses (``max_connections`` divided by
        ``max_connections_per_address``) hold every slot and switch direct
        delivery to this member off. A member proves its key within a round
        trip or two of its handshake, so churning the unproven slots does
        not keep members out; only the per-address cap refuses.
        """
        if self._by_address.get(address, 0) >= self.config.max_connections_per_address:
            return "too many connections from this address"
        if self._admitted >= self.config.max_connections:
            oldest = next((c for c in self.protocols if c.evictable), None)
            if oldest is None:
                return "too many connections to this peer"
            oldest.evict()
        self._admitted += 1
        self._by_address[address] = self._by_address.get(address, 0) + 1
        return None

    def release(self, address: str) -> None:
        """Forget a connection :meth:`admit` counted."""
        self._admitted -= 1
        left = self._by_address.get(address, 0) - 1
        if left > 0:
            self._by_address[address] = left
        else:
            self._by_address.pop(address, None)

    def move(self, old: str, new: str) -> None:
        """Count a connection :meth:`admit` counted under ``old`` under ``new``."""
        self.release(old)
        self._admitted += 1
        self._by_address[new] = self._by_address.get(new, 0) + 1

    def deliver(self, message: DirectMessage) -> asyncio.Task[Response]:
        """Hand ``message`` to the host; the task's result is the answer to send.

        The host call runs in a task of its own that a reset stream or a
        closed connection does not cancel: nothing must interrupt a host
        between processing a message and persisting it (only closing the
        node does, past its drain deadline).
        """
        task = asyncio.get_running_loop().create_task(self._run_host(message))
        self._host_tasks.add(task)
        task.add_done_callback(self._host_tasks.discard)
        return task

    async def _run_host(self, message: DirectMessage) -> Response:
        async with self._deliveries:
            if not self.accepting:
                # Queued behind the host call that was running at close: the
                # host may be gone now; the sender goes through the server.
                refusal: ServiceError = UnavailableError("this peer is shutting down")
                return ErrorResponse.from_exception(refusal)
            try:
                await self._receive(message)
            except DeliveryDeferredError:
                refusal = UnavailableError(
                    "this peer cannot take the message now; send it through the server"
                )
            except Exception as error:  # noqa: BLE001 - a host failure is one message's
                _log.warning("the host failed on a direct message (%s)", type(error).__name__)
                refusal = InternalError("this peer failed to take the message")
            else:
                return Done()
        return ErrorResponse.from_exception(refusal)

    async def drain(self, within: float) -> None:
        """Let the host call that is running finish (at most ``within`` seconds).

        Call after ``accepting`` is False: queued deliveries are then refused
        without reaching the host. One still running past ``within`` is
        cancelled, so that closing a node always ends.
        """
        if not self._host_tasks:
            return
        _done, late = await asyncio.wait(set(self._host_tasks), timeout=within)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)
