"""PeerConfig refuses what cannot work; advertised addresses follow the listen address."""

from __future__ import annotations

from dataclasses import replace

import pytest

from qpq_p2p import PeerConfig, StaticPeer
from qpq_p2p._node import advertised_hosts
from qpq_proto import DEFAULT_LIMITS


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"listen_port": 65536}, "listen_port"),
        ({"listen_host": "localhost"}, "not an IP address"),
        ({"advertise_hosts": ("peer.example",)}, "not an IP address"),
        ({"mdns_interfaces": ("eth0",)}, "not an IP address"),
        ({"ack_timeout_seconds": 0}, "ack_timeout_seconds"),
        ({"unauthenticated_buffer_bytes": 0}, "unauthenticated_buffer_bytes"),
        ({"max_direct_recipients": -1}, "max_direct_recipients"),
        ({"receive_window_bytes": DEFAULT_LIMITS.max_message_bytes - 1}, "one whole message"),
    ],
)
def test_a_config_that_cannot_work_is_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        replace(PeerConfig(), **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "host", "port", "message"),
    [
        (b"k" * 31, "127.0.0.1", 1, "identity_key"),
        (b"k" * 32, "", 1, "a host and a port"),
        (b"k" * 32, "h", 0, "a host and a port"),
        # A host name would be resolved outside the connect timeout, and
        # tell a resolver whom we are about to talk to.
        (b"k" * 32, "peer.example", 7000, "not an IP address"),
    ],
)
def test_a_static_peer_needs_a_key_a_host_and_a_port(
    key: bytes, host: str, port: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        StaticPeer(key, host, port)


def test_advertised_addresses_follow_the_configuration() -> None:
    assert advertised_hosts(PeerConfig(listen_host="127.0.0.1")) == ("127.0.0.1",)
    configured = PeerConfig(listen_host="127.0.0.1", advertise_hosts=("127.0.0.2", "::1"))
    assert advertised_hosts(configured) == ("127.0.0.2", "::1")
    # A wildcard listener advertises the address holding the default route, if any.
    for host in advertised_hosts(PeerConfig(listen_host="0.0.0.0")):  # noqa: S104
        assert host not in ("0.0.0.0", "")  # noqa: S104
