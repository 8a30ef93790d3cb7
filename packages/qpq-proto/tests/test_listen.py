"""The listening socket: what it asks of the kernel."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from test_quic import make_certificate

from qpq_proto.quic import CallServerProtocol, listen
from qpq_proto.quic._listen import RECEIVE_BUFFER_BYTES

#: Linux caps a requested receive buffer at this, then doubles it (socket(7)).
RMEM_MAX = int(Path("/proc/sys/net/core/rmem_max").read_text())


async def test_a_listening_socket_asks_for_a_receive_buffer_that_absorbs_bursts() -> None:
    # All connections' datagrams queue on this one socket; with Linux's
    # default buffer (208 KiB) thousands of handshakes were dropped while
    # 10,000 clients connected.
    certificate = make_certificate()
    private_key = serialization.load_pem_private_key(certificate.key_pem.encode(), None)

    def create_protocol(*args: Any, **kwargs: Any) -> CallServerProtocol:
        raise AssertionError("no connection is made here")

    bound = await listen(
        "127.0.0.1",
        0,
        alpn="qpq-test/1",
        idle_timeout=60,
        certificate=x509.load_der_x509_certificate(certificate.der),
        private_key=private_key,  # type: ignore[arg-type]
        create_protocol=create_protocol,
    )
    try:
        sock = bound.transport.get_extra_info("socket")
        size = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        assert size == 2 * min(RECEIVE_BUFFER_BYTES, RMEM_MAX)
    finally:
        bound.close()
