"""LAN discovery by mDNS / DNS-SD (RFC 6762, RFC 6763), advertising nothing but rotating ids.

Each node advertises, under ``_qpq._udp.local.``, one service instance per
group it is in (up to ``max_advertised_groups``), named by an opaque id::

    id = HMAC-SHA256(group secret, "qpq-p2p/1 mdns id" || 0x00 || window || identity key)[:16]

where the group secret is the MLS exporter of the group's current epoch
(RFC 9420 §8.5, label ``"qpq-p2p mdns"``) and ``window`` counts
``rotation_seconds`` periods of wall-clock time. Only members of that group
at that epoch can compute the id of a member, so a member looking for a
peer computes the peer's ids for the groups they share (for the current
and the previous window) and looks for them among the names it browsed.
An outsider sees random names that change every window and every epoch,
a port and an address, and no TXT data; the instance's host name is the
id too. Members whose epochs differ (one has not processed a commit yet)
do not recognise each other until they agree: they use the server's
rendezvous meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import time
from collections.abc import Callable

from zeroconf import IPVersion, NonUniqueNameException, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from qpq_core import MlsError
from qpq_p2p._discovery import AddressSource, PeerAddress
from qpq_p2p._groups import GroupRosters, group_members, shared_groups

__all__ = ["EXPORTER_LABEL", "SERVICE_TYPE", "MdnsDiscovery", "rotating_id"]

_log = logging.getLogger("qpq_p2p")

SERVICE_TYPE = "_qpq._udp.local."
#: The MLS exporter label of the group secret the ids are keyed with.
EXPORTER_LABEL = "qpq-p2p mdns"
_ID_DOMAIN = b"qpq-p2p/1 mdns id\x00"
_ID_BYTES = 16
_SECRET_BYTES = 32
#: How long to wait for a browsed instance's address records.
_RESOLVE_TIMEOUT_MS = 2000


def rotating_id(secret: bytes, window: int, identity_key: bytes) -> str:
    """The name a member advertises in ``window``, keyed by a group secret (hex)."""
    message = _ID_DOMAIN + window.to_bytes(8, "big") + identity_key
    return hmac.new(secret, message, hashlib.sha256).digest()[:_ID_BYTES].hex()


def _instance(identifier: str) -> str:
    return f"{identifier}.{SERVICE_TYPE}"


class MdnsDiscovery:
    """Advertise our rotating ids and recognise members' ids on the LAN.

    Args:
        me: our identity key.
        groups: our MLS state (group secrets and rosters).
        interfaces: interface addresses to use; empty: every interface.
        rotation_seconds: how long one id lasts.
        max_groups: groups we advertise an id for at once.
        clock: wall-clock seconds (injected by tests).
    """

    def __init__(
        self,
        me: bytes,
        groups: GroupRosters,
        *,
        interfaces: tuple[str, ...],
        rotation_seconds: float,
        max_groups: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._me = me
        self._groups = groups
        self._interfaces = interfaces
        self._rotation = rotation_seconds
        self._max_groups = max_groups
        self._clock = clock
        self._zeroconf: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._port = 0
        self._hosts: tuple[str, ...] = ()
        self._advertised: dict[str, AsyncServiceInfo] = {}
        #: Instance ids browsed on the LAN (ours included).
        self._seen: set[str] = set()
        self._changed = asyncio.Event()

    @property
    def advertised(self) -> tuple[str, ...]:
        """The instance names we advertise now."""
        return tuple(_instance(i) for i in self._advertised)

    async def start(self, port: int, hosts: tuple[str, ...]) -> None:
        """Start browsing, and advertise ``hosts`` and ``port`` under our ids."""
        self._port, self._hosts = port, hosts
        if self._interfaces:
            v6 = any(ipaddress.ip_address(i).version == 6 for i in self._interfaces)
            v4 = any(ipaddress.ip_address(i).version == 4 for i in self._interfaces)
            version = IPVersion.All if v4 and v6 else IPVersion.V6Only if v6 else IPVersion.V4Only
            self._zeroconf = AsyncZeroconf(interfaces=list(self._interfaces), ip_version=version)
        else:
            self._zeroconf = AsyncZeroconf()
        self._browser = AsyncServiceBrowser(
            self._zeroconf.zeroconf, [SERVICE_TYPE], handlers=[self._on_change]
        )
        await self.refresh()

    def _on_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        identifier = name.removesuffix(f".{SERVICE_TYPE}")
        if state_change is ServiceStateChange.Removed:
            self._seen.discard(identifier)
        else:
            self._seen.add(identifier)
        self._changed.set()

    def _window(self) -> int:
        return int(self._clock() // self._rotation)

    def _secret(self, group_id: bytes) -> bytes | None:
        try:
            return self._groups.export_secret(group_id, EXPORTER_LABEL, b"", _SECRET_BYTES)
        except MlsError:
            return None

    def _own_ids(self) -> list[str]:
        window = self._window()
        ids = []
        for group_id in self._groups.group_ids():
            if self._me not in group_members(self._groups, group_id):
                continue
            secret = self._secret(group_id)
            if secret is not None:
                ids.append(rotating_id(secret, window, self._me))
            if len(ids) == self._max_groups:
                break
        return ids

    def ids_of(self, identity_key: bytes) -> list[str]:
        """What ``identity_key`` may advertise now: per shared group, this window and the last."""
        window = self._window()
        ids = []
        for group_id in shared_groups(self._groups, self._me, identity_key):
            secret = self._secret(group_id)
            if secret is not None:
                ids += [rotating_id(secret, w, identity_key) for w in (window, window - 1)]
        return ids

    async def refresh(self) -> None:
        """Advertise the ids of this window and epoch; withdraw the stale ones."""
        if self._zeroconf is None:
            return
        wanted = set(self._own_ids())
        for identifier in [i for i in self._advertised if i not in wanted]:
            info = self._advertised.pop(identifier)
            await (await self._zeroconf.async_unregister_service(info))
        new = [i for i in wanted if i not in self._advertised]
        await asyncio.gather(*(self._advertise(i) for i in new))

    async def _advertise(self, identifier: str) -> None:
        if self._zeroconf is None:
            return
        info = AsyncServiceInfo(
            SERVICE_TYPE,
            _instance(identifier),
            port=self._port,
            parsed_addresses=list(self._hosts),
            server=f"{identifier}.local.",
            properties={},
        )
        try:
            announced = await self._zeroconf.async_register_service(info)
        except NonUniqueNameException:
            # Another instance holds this name; ids are 128-bit, so it is a replay.
            _log.warning("an mDNS name of ours is taken on the LAN; not advertising it")
            return
        self._advertised[identifier] = info
        await announced

    async def resolve(self, identity_key: bytes) -> tuple[PeerAddress, ...]:
        """Addresses of ``identity_key`` found on the LAN now (none: not seen)."""
        if self._zeroconf is None:
            return ()
        found: list[PeerAddress] = []
        for identifier in self.ids_of(identity_key):
            if identifier not in self._seen or identifier in self._advertised:
                continue
            info = AsyncServiceInfo(SERVICE_TYPE, _instance(identifier))
            if not await info.async_request(self._zeroconf.zeroconf, _RESOLVE_TIMEOUT_MS):
                continue
            if info.port:
                found += [
                    PeerAddress(host, info.port, AddressSource.MDNS)
                    for host in info.parsed_addresses()
                ]
        return tuple(dict.fromkeys(found))

    async def wait_for(self, identity_key: bytes, within: float) -> tuple[PeerAddress, ...]:
        """:meth:`resolve`, waiting up to ``within`` seconds for the peer to appear."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while True:
                    self._changed.clear()
                    found = await self.resolve(identity_key)
                    if found:
                        return found
                    await self._changed.wait()
        return ()

    async def close(self) -> None:
        """Withdraw our ids and stop browsing."""
        if self._zeroconf is None:
            return
        zeroconf, self._zeroconf = self._zeroconf, None
        if self._browser is not None:
            await self._browser.async_cancel()
        self._advertised.clear()
        await zeroconf.async_unregister_all_services()
        await zeroconf.async_close()
