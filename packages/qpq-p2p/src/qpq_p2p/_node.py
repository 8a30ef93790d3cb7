"""A client's direct side: a listener, proven links to peers, discovery, and the fallback.

::

    node = PeerNode(identity, mls, receive, PeerConfig(listen_port=0))
    await node.start()
    await node.attach_server(server_connection)       # publish, and resolve through it
    report = await node.send(encrypted.message, via_server=publish_through_server)
    await node.close()

:meth:`PeerNode.send` takes one MLS application message of one group, tries
to hand it to every other member directly, and calls ``via_server`` (the
host publishing the same bytes through the server) as soon as one member
could not be reached or did not acknowledge in time; it returns when the
message is delivered either way, or raises what ``via_server`` raised.
Members who got it directly skip the server's copy by its digest
(:func:`~qpq_p2p.message_digest`), so nothing is lost and nothing is shown
twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Self

from qpq_core import MlsMessageKind, peek_message
from qpq_p2p._certificate import DeviceCertificate
from qpq_p2p._config import PeerConfig
from qpq_p2p._delivery import DirectFailure, Receiver, SendReport
from qpq_p2p._dialer import PeerLink, dial
from qpq_p2p._discovery import PeerAddress, Resolver, StaticResolver, dialable
from qpq_p2p._errors import PeerRefusedError, PeerUnreachableError
from qpq_p2p._groups import GroupRosters, group_members, known_peers
from qpq_p2p._hub import ListenerHub
from qpq_p2p._listener import PeerListener, start_listener
from qpq_p2p._mdns import MdnsDiscovery
from qpq_p2p._peers import PeerInfo, PeerTable
from qpq_p2p._proof import Signer
from qpq_p2p._rendezvous import RendezvousServer, ServerRendezvous
from qpq_proto import Endpoint
from qpq_proto.errors import LocalProtocolError, QpqError

__all__ = ["PeerNode"]

_log = logging.getLogger("qpq_p2p")

#: Addresses whose route picks the interface an advertised address comes from.
#: connect() on a UDP socket sends nothing; it only chooses the route.
_ROUTE_PROBES = {4: "192.0.2.1", 6: "2001:db8::1"}


def _default_route_address(version: int) -> str | None:
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((_ROUTE_PROBES[version], 9))
        except OSError:
            return None
        return str(probe.getsockname()[0])


def advertised_hosts(config: PeerConfig) -> tuple[str, ...]:
    """Where others can reach this node: the configured hosts, or a best guess."""
    if config.advertise_hosts:
        return config.advertise_hosts
    listen = ipaddress.ip_address(config.listen_host)
    if not listen.is_unspecified:
        return (config.listen_host,)
    guess = _default_route_address(listen.version)
    return (guess,) if guess is not None else ()


class PeerNode:
    """Direct delivery for one identity: listen, dial, discover, fall back.

    Args:
        identity: our identity (``qpq_core.Identity``); it signs our proofs.
        groups: our MLS state (``qpq_core.MlsClient``), read for rosters and
            exporter secrets; the node never changes it.
        receive: the host's handler for each direct message (see
            :data:`~qpq_p2p.Receiver`).
        config: settings.
        certificate: the listener's certificate (a fresh one by default).
        resolvers: more resolvers, asked after the static addresses and
            before mDNS and the server (tests inject theirs).
        remembered: where members were last found (a host keeps
            :meth:`peers`' addresses across runs): tried while no server
            is attached or it cannot answer, so that a node started while
            the server is down still reaches them.
        clock: monotonic seconds (injected by tests).
    """

    def __init__(
        self,
        identity: Signer,
        groups: GroupRosters,
        receive: Receiver,
        config: PeerConfig | None = None,
        *,
        certificate: DeviceCertificate | None = None,
        resolvers: Sequence[Resolver] = (),
        remembered: Mapping[bytes, Sequence[PeerAddress]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._identity = identity
        self._groups = groups
        self._config = config or PeerConfig()
        self._clock = clock
        self._hub = ListenerHub(
            identity, groups, certificate or DeviceCertificate.generate(), receive, self._config
        )
        self._resolvers: list[Resolver] = [StaticResolver(self._config.static_peers), *resolvers]
        self._mdns: MdnsDiscovery | None = None
        if self._config.lan_discovery:
            self._mdns = MdnsDiscovery(
                identity.public_key,
                groups,
                interfaces=self._config.mdns_interfaces,
                rotation_seconds=self._config.mdns_rotation_seconds,
                max_groups=self._config.max_advertised_groups,
            )
        self._rendezvous: ServerRendezvous | None = None
        self._listener: PeerListener | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._links: dict[bytes, PeerLink] = {}
        self._dialing: dict[bytes, asyncio.Lock] = {}
        #: Direct attempts a send stopped waiting for (the server path took over).
        self._late: set[asyncio.Task[tuple[bytes, str | None]]] = set()
        self._table = PeerTable(self._config.unreachable_backoff_seconds)
        for key, addresses in (remembered or {}).items():
            self._table.found(key, tuple(addresses))

    # ---- lifecycle -----------------------------------------------------

    async def start(self) -> None:
        """Listen, and start LAN discovery if configured."""
        if self._listener is not None:
            return
        self._listener = await start_listener(self._hub)
        if self._mdns is not None:
            await self._mdns.start(self.port, advertised_hosts(self._config))
            self._refresher = asyncio.create_task(self._refresh_periodically(self._mdns))

    async def close(self) -> None:
        """Stop listening and discovering; close every link (idempotent)."""
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        if self._mdns is not None:
            await self._mdns.close()
        late, self._late = set(self._late), set()
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        links, self._links = list(self._links.values()), {}
        await asyncio.gather(*(link.close() for link in links))
        if self._listener is not None:
            listener, self._listener = self._listener, None
            await listener.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def port(self) -> int:
        """The UDP port the listener is bound to (after :meth:`start`)."""
        if self._listener is None:
            raise LocalProtocolError("the node is not started")
        return self._listener.port

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        """Where this node listens, as published to the server and on the LAN."""
        return tuple(Endpoint(host, self.port) for host in advertised_hosts(self._config))

    @property
    def mdns(self) -> MdnsDiscovery | None:
        """The LAN discovery, when enabled."""
        return self._mdns

    # ---- the server's rendezvous ----------------------------------------

    async def attach_server(self, server: RendezvousServer) -> None:
        """Publish our endpoints through ``server`` and resolve peers through it from now on.

        ``server`` is a connection that proved our identity (the host's).
        """
        rendezvous = ServerRendezvous(server)
        await rendezvous.publish(self.endpoints)
        self._rendezvous = rendezvous
        # Learn where members are while the server can tell: the addresses
        # stay known if it goes away later.
        await asyncio.gather(*(self._resolve(key) for key in self._direct_peers()))

    def _direct_peers(self) -> list[bytes]:
        """Members of groups small enough to be reached directly."""
        me = self._identity.public_key
        keys: set[bytes] = set()
        for group_id in self._groups.group_ids():
            members = group_members(self._groups, group_id)
            if me in members and len(members) - 1 <= self._config.max_direct_recipients:
                keys.update(k for k in members if k != me)
        return sorted(keys)

    def detach_server(self) -> None:
        """Stop resolving through the server (its connection is going away)."""
        self._rendezvous = None

    async def refresh_discovery(self) -> None:
        """Re-advertise on the LAN now (a new epoch or group changes our ids)."""
        if self._mdns is not None:
            await self._mdns.refresh()

    async def _refresh_periodically(self, mdns: MdnsDiscovery) -> None:
        period = min(self._config.mdns_rotation_seconds / 4, 60.0)
        while True:
            await asyncio.sleep(period)
            try:
                await mdns.refresh()
            except Exception as error:  # noqa: BLE001 - one failed refresh must not end discovery
                _log.warning("mDNS refresh failed (%s)", type(error).__name__)

    # ---- sending --------------------------------------------------------

    async def send(
        self, message: bytes, *, via_server: Callable[[], Awaitable[object]]
    ) -> SendReport:
        """Deliver one MLS application message to the other members of its group.

        Tries each member directly; calls ``via_server`` once (the host
        publishing these same bytes through the server) as soon as a member
        is not reached or does not acknowledge within ``ack_timeout_seconds``
        of the start, right away when a member failed recently (the others
        are still tried directly), or instead of any direct attempt when
        direct delivery does not apply (node not started, a group over
        ``max_direct_recipients``). When ``via_server`` raises, the direct
        attempts were still given until the acknowledgement deadline.

        Raises:
            LocalProtocolError: ``message`` is no MLS application message
                (commits and proposals always go through the server).
            Exception: whatever ``via_server`` raised; the message is then
                not known to have reached every member.
        """
        info = peek_message(message)
        if info.kind is not MlsMessageKind.APPLICATION or info.group_id is None:
            raise LocalProtocolError("only MLS application messages go directly to peers")
        me = self._identity.public_key
        recipients = [k for k in group_members(self._groups, info.group_id) if k != me]
        if not recipients:
            return SendReport(direct=(), failed=(), via_server=False)
        now = self._clock()
        skipped = [
            DirectFailure(k, "a direct attempt failed recently")
            for k in recipients
            if self._table.backing_off(k, now)
        ]
        if self._listener is None or len(recipients) > self._config.max_direct_recipients:
            await via_server()
            return SendReport(direct=(), failed=tuple(skipped), via_server=True)
        # Members in backoff get it through the server (started at once);
        # the others are still tried directly: one member who cannot be
        # reached (offline, the server away) must not keep it from the rest.
        backing_off = {f.recipient for f in skipped}
        return await self._send_direct(
            [k for k in recipients if k not in backing_off], message, via_server, skipped
        )

    async def _send_direct(
        self,
        recipients: list[bytes],
        message: bytes,
        via_server: Callable[[], Awaitable[object]],
        skipped: list[DirectFailure],
    ) -> SendReport:
        attempts = {asyncio.create_task(self._deliver(key, message)): key for key in recipients}
        pending: set[asyncio.Task[tuple[bytes, str | None]]] = set(attempts)
        server: asyncio.Task[object] | None = None
        if skipped:
            server = asyncio.create_task(_awaited(via_server))
        direct: list[bytes] = []
        failed: list[DirectFailure] = list(skipped)

        def settle(done: set[asyncio.Task[tuple[bytes, str | None]]]) -> None:
            for task in done:
                key, reason = task.result()
                if reason is None:
                    direct.append(key)
                else:
                    failed.append(DirectFailure(key, reason))

        loop = asyncio.get_running_loop()
        # The server path starts at the first failure, or as soon as an
        # acknowledgement is late: a member whose endpoints never answer (a
        # black hole) costs a send ack_timeout, never the direct timeout.
        deadline = loop.time() + self._config.ack_timeout_seconds
        try:
            while pending and not failed:
                done, pending = await asyncio.wait(
                    pending,
                    timeout=max(0.0, deadline - loop.time()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not done:
                    break
                settle(done)
            if (pending or failed) and server is None:
                # A member is missing or late: the server delivers to everyone now.
                server = asyncio.create_task(_awaited(via_server))
            if pending:
                # The others may still acknowledge in time (also when the
                # server path fails): the direct copies are handed over
                # before the send returns, in the order of the sends.
                done, pending = await asyncio.wait(
                    pending, timeout=max(0.0, deadline - loop.time())
                )
                settle(done)
            if server is not None:
                await server
        finally:
            if server is not None and not server.done():
                server.cancel()
            finished = {task for task in pending if task.done()}
            pending -= finished
            settle({task for task in finished if not task.cancelled()})
            # Late attempts go on (each within direct_timeout): one that
            # succeeds leaves a link for the next message, one that fails
            # puts the member into backoff. close() cancels what is left.
            for task in pending:
                self._late.add(task)
                task.add_done_callback(self._late.discard)
        waited = self._config.ack_timeout_seconds
        failed += [
            DirectFailure(attempts[task], f"no acknowledgement within {waited:g} s")
            for task in pending
        ]
        return SendReport(direct=tuple(direct), failed=tuple(failed), via_server=server is not None)

    async def _deliver(self, key: bytes, message: bytes) -> tuple[bytes, str | None]:
        try:
            async with asyncio.timeout(self._config.direct_timeout_seconds):
                link = await self._link(key)
                await link.deliver(message, within=self._config.ack_timeout_seconds)
        except PeerRefusedError as refused:
            # Reachable, but its host did not take this one (say, an epoch it
            # has not reached): no backoff, the server orders it for them.
            return key, str(refused)
        except TimeoutError:
            reason = f"no direct delivery within {self._config.direct_timeout_seconds:g} s"
        except Exception as error:  # noqa: BLE001 - any failure here means: use the server
            reason = str(error) or type(error).__name__
        else:
            return key, None
        self._table.failed(key, reason, self._clock())
        await self._drop_link(key)
        return key, reason

    # ---- links ----------------------------------------------------------

    async def _link(self, key: bytes) -> PeerLink:
        link = self._links.get(key)
        if link is not None and not link.lost:
            return link
        lock = self._dialing.setdefault(key, asyncio.Lock())
        async with lock:
            link = self._links.get(key)
            if link is not None and not link.lost:
                return link
            await self._drop_link(key)
            link = await self._dial(key)
            self._links[key] = link
            self._table.reached(key)
            return link

    async def _dial(self, key: bytes) -> PeerLink:
        addresses = await self._resolve(key)
        if not addresses:
            raise PeerUnreachableError("no address is known for this peer")
        last: QpqError | OSError | None = None
        for address in addresses:
            try:
                return await dial(
                    address, key, identity=self._identity, groups=self._groups, config=self._config
                )
            except (QpqError, OSError) as error:
                _log.info("no direct link at %s (%s)", address.source, type(error).__name__)
                last = error
        if isinstance(last, QpqError):
            raise last
        raise PeerUnreachableError(f"no address of this peer answered ({last})")

    async def _drop_link(self, key: bytes) -> None:
        link = self._links.pop(key, None)
        if link is not None:
            await link.close()

    async def _resolve(self, key: bytes) -> tuple[PeerAddress, ...]:
        resolvers: list[Resolver] = list(self._resolvers)
        if self._mdns is not None:
            resolvers.append(self._mdns)
        if self._rendezvous is not None:
            resolvers.append(self._rendezvous)
        found: list[PeerAddress] = []
        failed = False
        for resolver in resolvers:
            try:
                found += await resolver.resolve(key)
            except (QpqError, OSError) as error:
                _log.info("a resolver failed (%s)", type(error).__name__)
                failed = True
        if failed or self._rendezvous is None:
            # A server that cannot answer now (it is away, or we started
            # while it was) does not move the member: where it was last
            # found still counts.
            found += self._table.addresses(key)
        unique: dict[tuple[str, int], PeerAddress] = {}
        for address in found:
            if dialable(address):
                unique.setdefault((address.host, address.port), address)
            else:
                _log.info("a %s address of a peer is no IP address; not dialed", address.source)
        # A few per peer: each one that does not answer costs a connect timeout.
        addresses = tuple(unique.values())[: self._config.max_addresses_per_peer]
        self._table.found(key, addresses)
        return addresses

    # ---- peers ----------------------------------------------------------

    def peers(self) -> tuple[PeerInfo, ...]:
        """Every member we share a group with: addresses found, reachability."""
        known = known_peers(self._groups, self._identity.public_key)
        return tuple(
            self._table.info(
                key,
                groups,
                connected=key in self._links and not self._links[key].lost,
            )
            for key, groups in sorted(known.items())
        )

    async def probe(self, identity_key: bytes | None = None) -> tuple[PeerInfo, ...]:
        """Try a direct link to one peer (or every known one), then :meth:`peers`."""
        keys = (
            [identity_key]
            if identity_key is not None
            else list(known_peers(self._groups, self._identity.public_key))
        )

        async def one(key: bytes) -> None:
            try:
                async with asyncio.timeout(self._config.direct_timeout_seconds):
                    await self._link(key)
            except (QpqError, OSError) as error:  # TimeoutError is an OSError
                self._table.failed(key, str(error) or type(error).__name__, self._clock())

        await asyncio.gather(*(one(key) for key in keys))
        return self.peers()


async def _awaited(call: Callable[[], Awaitable[object]]) -> object:
    return await call()
