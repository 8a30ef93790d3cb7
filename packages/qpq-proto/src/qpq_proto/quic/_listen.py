"""Binding a listening endpoint: a UDP socket whose connections answer calls.

The qpq server and a client's direct-delivery listener bind the same way:
a TLS 1.3 server configuration for one ALPN and a certificate, and
aioquic's ``QuicServer`` building a :class:`~qpq_proto.quic.CallServerProtocol`
subclass for each connection.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qpq_proto.quic._aioquic import QuicConfiguration, QuicServer, connection_ids
from qpq_proto.quic._serve import CallServerProtocol

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

__all__ = ["RECEIVE_BUFFER_BYTES", "CallListener", "listen"]

#: The receive buffer asked for on a listening socket. Every connection's
#: datagrams queue on this one socket while the event loop is busy, and the
#: kernel drops what overflows: Linux's default of 208 KiB dropped thousands
#: of handshake datagrams while 10,000 clients connected (bench, issue 23),
#: and each loss costs a client a probe timeout, doubling on every repeat
#: (RFC 9002 section 6.2), until some missed the server's auth deadline.
#: The kernel caps the request at ``net.core.rmem_max`` (then doubles it).
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024


class _Server(QuicServer):
    """aioquic's ``QuicServer``, forgetting a connection that ended by its own IDs.

    aioquic copies and searches the IDs of every connection each time one
    ends: quadratic in the connections, so 10,000 clients that leave
    together kept the event loop busy for minutes (it did not even take a
    SIGTERM in time). This looks up the ended connection's own IDs instead.
    """

    def _connection_terminated(self, protocol: Any) -> None:
        ids = connection_ids(protocol._quic)
        if ids is None:
            super()._connection_terminated(protocol)
            return
        for cid in ids:
            if self._protocols.get(cid) is protocol:
                del self._protocols[cid]


@dataclass(slots=True)
class CallListener:
    """A bound UDP socket whose every connection is a :class:`CallServerProtocol`."""

    transport: asyncio.DatagramTransport
    #: The bound port (the one picked, when 0 was asked for).
    port: int
    server: QuicServer

    def close(self) -> None:
        """Stop listening; aioquic closes the connections that are left."""
        self.server.close()


async def listen(
    host: str,
    port: int,
    *,
    alpn: str,
    idle_timeout: float,
    certificate: x509.Certificate,
    private_key: CertificateIssuerPrivateKeyTypes,
    chain: Sequence[x509.Certificate] = (),
    create_protocol: Callable[..., CallServerProtocol],
) -> CallListener:
    """Bind ``host:port`` (0 = any free port) and answer ``alpn`` calls there.

    ``create_protocol`` gets aioquic's protocol arguments (pass them on to
    :class:`CallServerProtocol`) for each new connection.
    """
    # Flow-control windows are set per connection (BoundedQuicConnection).
    configuration = QuicConfiguration(
        is_client=False, alpn_protocols=[alpn], idle_timeout=idle_timeout
    )
    configuration.certificate = certificate
    configuration.certificate_chain = list(chain)
    configuration.private_key = private_key
    transport, server = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: _Server(configuration=configuration, create_protocol=create_protocol),
        local_addr=(host, port),
    )
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
    return CallListener(transport, int(transport.get_extra_info("sockname")[1]), server)
