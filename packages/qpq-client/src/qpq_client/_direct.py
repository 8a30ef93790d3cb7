"""Direct delivery for a connected profile (qpq-p2p): its node started and stopped.

With direct delivery on, a session has a :class:`qpq_p2p.PeerNode`: it
listens for members, publishes where it listens through the server, and
sends application messages directly where members can be reached; what a
member hands over arrives through ``receive`` (processed and persisted
before its sender hears back).

Where members were last found is kept in the profile (:data:`PEERS_SETTING`),
so that a client started while the server is down still reaches them; the
server, once it answers, is asked again (and is the one that counts).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from qpq_client._session import Session
from qpq_client._state import StateStore
from qpq_p2p import AddressSource, DirectMessage, PeerAddress, PeerConfig, PeerNode

__all__ = ["PEERS_SETTING", "attach_server", "remember_peers", "start_peers", "stop_peers"]

_log = logging.getLogger("qpq_client")

#: The setting that holds where members were last found (JSON, encrypted with the profile).
PEERS_SETTING = "p2p_peers"


async def start_peers(
    session: Session,
    receive: Callable[[DirectMessage], Awaitable[None]],
    config: PeerConfig,
) -> None:
    """Start listening, attach the server if it answers, and give the session its node.

    Without the server (``session.conn.lost``), the node reaches members at
    the addresses remembered from earlier runs; :func:`attach_server` once
    the server is back.
    """
    node = PeerNode(
        session.identity, session.mls, receive, config, remembered=remembered(session.store)
    )
    await node.start()
    session.peers = node
    if session.conn.lost:
        return
    try:
        await attach_server(session)
    except BaseException:
        session.peers = None
        await node.close()
        raise


async def attach_server(session: Session) -> None:
    """Publish where the session's node listens and resolve members through
    the server from now on (the caller then :func:`remember_peers`)."""
    if session.peers is not None:
        await session.peers.attach_server(session.conn)


async def stop_peers(session: Session) -> None:
    """Detach and close the session's node, if it has one."""
    node, session.peers = session.peers, None
    if node is not None:
        node.detach_server()
        await node.close()


def remember_peers(session: Session) -> None:
    """Keep where each member was last found in the profile (under the profile lock)."""
    if session.peers is None:
        return
    known = {
        info.identity_key.hex(): [[a.host, a.port, a.source.value] for a in info.addresses]
        for info in session.peers.peers()
        if info.addresses
    }
    value = json.dumps(known, sort_keys=True)
    if session.store.setting(PEERS_SETTING) != value:
        session.persist(lambda tx: tx.set_setting(PEERS_SETTING, value))


def remembered(store: StateStore) -> dict[bytes, tuple[PeerAddress, ...]]:
    """Where members were last found, as :func:`remember_peers` kept it."""
    stored = store.setting(PEERS_SETTING)
    if not stored:
        return {}
    try:
        known = json.loads(stored)
        return {
            bytes.fromhex(key): tuple(
                PeerAddress(str(host), int(port), AddressSource(source))
                for host, port, source in addresses
            )
            for key, addresses in known.items()
        }
    except (ValueError, TypeError) as error:
        # Only ever written by remember_peers; never a reason not to start.
        _log.warning("the remembered peer addresses are unreadable (%s)", type(error).__name__)
        return {}
