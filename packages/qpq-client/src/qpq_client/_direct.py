"""Direct delivery for a connected profile (qpq-p2p): its node started and stopped.

With direct delivery on, a session has a :class:`qpq_p2p.PeerNode`: it
listens for members, publishes where it listens through the server, and
sends application messages directly where members can be reached; what a
member hands over arrives through ``receive`` (processed and persisted
before its sender hears back).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from qpq_client._session import Session
from qpq_p2p import DirectMessage, PeerConfig, PeerNode

__all__ = ["start_peers", "stop_peers"]


async def start_peers(
    session: Session, receive: Callable[[DirectMessage], Awaitable[None]], config: PeerConfig
) -> None:
    """Start listening, attach the server (rendezvous, fallback), and give the session its node."""
    node = PeerNode(session.identity, session.mls, receive, config)
    await node.start()
    try:
        await node.attach_server(session.conn)
    except BaseException:
        await node.close()
        raise
    session.peers = node


async def stop_peers(session: Session) -> None:
    """Detach and close the session's node, if it has one."""
    node, session.peers = session.peers, None
    if node is not None:
        node.detach_server()
        await node.close()
