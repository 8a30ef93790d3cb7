"""LAN discovery: members recognise each other's rotating ids; outsiders learn nothing.

The network test multicasts on the loopback interface only (127.0.0.1, the
probe with TTL 0), so nothing leaves this machine; it is skipped, with the
reason, where this machine does not loop multicast back.
"""

from __future__ import annotations

import select
import socket
from dataclasses import replace

import pytest
from p2p_helpers import CONFIG, LOCAL, Member, build_group, never
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from qpq_p2p import (
    EXPORTER_LABEL,
    SERVICE_TYPE,
    AddressSource,
    MdnsDiscovery,
    PeerAddress,
    PeerNode,
    rotating_id,
)

MDNS_GROUP = "224.0.0.251"


def multicast_on_loopback() -> str | None:
    """None if a multicast datagram sent on 127.0.0.1 comes back here; else why not."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.bind(("0.0.0.0", 0))  # noqa: S104 - joined to the group on 127.0.0.1 only
        port = receiver.getsockname()[1]
        membership = socket.inet_aton(MDNS_GROUP) + socket.inet_aton(LOCAL)
        receiver.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(LOCAL))
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)  # never routed
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        sender.sendto(b"qpq multicast probe", (MDNS_GROUP, port))
        readable, _, _ = select.select([receiver], [], [], 2.0)
    except OSError as error:
        return f"IPv4 multicast on {LOCAL} fails on this machine: {error}"
    finally:
        receiver.close()
        sender.close()
    if not readable:
        return f"a multicast datagram sent on {LOCAL} did not come back within 2 s"
    return None


def test_members_compute_the_same_ids_and_they_rotate() -> None:
    (alice, bob), group_id = build_group(2)
    now = [1_000_000.0]

    def discovery(member: Member, me: bytes) -> MdnsDiscovery:
        return MdnsDiscovery(
            me,
            member.mls,
            interfaces=(),
            rotation_seconds=600,
            max_groups=16,
            clock=lambda: now[0],
        )

    alices, bobs = discovery(alice, alice.key), discovery(bob, bob.key)
    secret = bob.mls.export_secret(group_id, EXPORTER_LABEL, b"", 32)
    window = int(now[0] // 600)
    current = rotating_id(secret, window, bob.key)
    # Alice computes Bob's id (this window and the last) from their shared group.
    assert alices.ids_of(bob.key) == [current, rotating_id(secret, window - 1, bob.key)]
    assert bobs.ids_of(alice.key)[0] == rotating_id(secret, window, alice.key)
    # 32 hex digits, nothing of the key or the group in it.
    assert len(current) == 32
    assert bob.key.hex()[:8] not in current
    assert group_id.hex()[:8] not in current
    # The next window, and the next epoch, give other names.
    now[0] += 600
    assert alices.ids_of(bob.key)[0] not in (current,)
    assert alices.ids_of(bob.key)[1] == current
    commit = alice.mls.self_update(group_id).commit
    alice.mls.merge_pending_commit(group_id)
    bob.mls.process(commit)
    assert current not in alices.ids_of(bob.key)
    # Someone outside the group has no secret to compute them with.
    (stranger, _other), _group = build_group(2)
    assert discovery(stranger, stranger.key).ids_of(bob.key) == []


async def test_members_find_each_other_on_the_lan() -> None:
    reason = multicast_on_loopback()
    if reason is not None:
        pytest.skip(reason)
    (alice, bob), group_id = build_group(2)
    lan = replace(CONFIG, lan_discovery=True, mdns_interfaces=(LOCAL,), advertise_hosts=(LOCAL,))
    async with (
        PeerNode(bob.identity, bob.mls, bob.receive, lan) as bob_node,
        PeerNode(alice.identity, alice.mls, alice.receive, lan) as alice_node,
    ):
        assert alice_node.mdns is not None
        assert bob_node.mdns is not None
        found = await alice_node.mdns.wait_for(bob.key, within=20)
        assert found == (PeerAddress(LOCAL, bob_node.port, AddressSource.MDNS),)
        message = alice.mls.encrypt(group_id, b"hello on the LAN").message
        assert (await alice_node.send(message, via_server=never)).direct == (bob.key,)
        assert bob.texts == [(alice.key, b"hello on the LAN")]
        (seen,) = alice_node.peers()
        assert [a.source for a in seen.addresses] == [AddressSource.MDNS]
        # What anyone on the LAN sees of Bob: an opaque name, a port, an address.
        (name,) = bob_node.mdns.advertised
        identifier = name.removesuffix(f".{SERVICE_TYPE}")
        assert identifier in alice_node.mdns.ids_of(bob.key)
        outsider = AsyncZeroconf(interfaces=[LOCAL])
        try:
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            assert await info.async_request(outsider.zeroconf, 5000)
            assert info.properties == {}
            assert info.server == f"{identifier}.local."
            assert info.port == bob_node.port
        finally:
            await outsider.async_close()
