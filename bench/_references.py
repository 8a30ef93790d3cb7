"""Transport references on loopback: a qh3 (QUIC) echo and a grpcio unary echo.

Each server runs as its own process, as qpq-server and the raw aioquic echo
of ``bench_server.py`` do, and answers the same pattern: one request, its
bytes echoed back. The qh3 server answers on one new bidirectional stream
per call (request and FIN, answer and FIN), with the echo logic of
``_echo.py`` that the aioquic baseline uses too; the gRPC one is a unary
method over TLS on TCP (HTTP/2), taking and returning raw bytes.

    python -m bench._references {qh3,grpc} CERT KEY READY_FILE   # one server process
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import signal
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from qh3.asyncio.client import connect
from qh3.asyncio.protocol import QuicConnectionProtocol
from qh3.asyncio.server import QuicServer
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.events import ConnectionTerminated, QuicEvent, StreamDataReceived, StreamReset

from bench._echo import (
    CONNECTION_WINDOW,
    STREAM_WINDOW,
    EchoStreams,
    PendingRequests,
    announce,
    serving_process,
)
from qpq_proto import ALPN

KINDS = ("qh3", "grpc")
_METHOD = "/bench.Echo/Call"
#: Large enough for the 1 MiB payloads; gRPC refuses messages over 4 MiB by default.
_MAX_MESSAGE = 8 * 1024 * 1024
_GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.max_send_message_length", _MAX_MESSAGE),
]
Call = Callable[[bytes], Awaitable[bytes]]


def write_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed P-256 certificate for localhost / 127.0.0.1: (cert PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "reference-cert.pem", directory / "reference-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


# ---- qh3 -------------------------------------------------------------------------


class _Qh3Echo(QuicConnectionProtocol):
    """The echo (:class:`bench._echo.EchoStreams`) over qh3."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._streams = EchoStreams()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            reply = self._streams.received(event.stream_id, event.data, event.end_stream)
            if reply is not None:
                self._quic.send_stream_data(event.stream_id, reply, end_stream=True)
                self.transmit()
        elif isinstance(event, StreamReset):
            self._streams.reset(event.stream_id)


class _Qh3Client(QuicConnectionProtocol):
    """One new stream per request: write it with FIN, collect the answer until FIN."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending = PendingRequests()
        self._received = asyncio.Event()

    # qh3 refuses to open a stream beyond the peer's MAX_STREAMS credit
    # instead of queueing it, so a request waits for the credit: it can only
    # come in a datagram.
    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        super().datagram_received(data, addr)
        self._received.set()

    def datagrams_received(self, data: list[bytes], addr: Any) -> None:
        super().datagrams_received(data, addr)
        self._received.set()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            self._pending.received(event.stream_id, event.data, event.end_stream)
        elif isinstance(event, ConnectionTerminated):
            self._pending.lost(event.reason_phrase)

    async def request(self, data: bytes) -> bytes:
        # Stream n (client bidirectional ids are 4n) needs a credit above n.
        while (
            self._quic.get_next_available_stream_id() // 4 >= self._quic.max_concurrent_bidi_streams
        ):
            self._received.clear()
            await self._received.wait()
        stream_id = self._quic.get_next_available_stream_id()
        answer = self._pending.open(stream_id)
        self._quic.send_stream_data(stream_id, data, end_stream=True)
        self.transmit()
        return await answer


async def _serve_qh3(cert: Path, key: Path) -> int:
    configuration = QuicConfiguration(
        is_client=False,
        alpn_protocols=[ALPN],
        idle_timeout=120.0,
        max_stream_data=STREAM_WINDOW,
        max_data=CONNECTION_WINDOW,
    )
    configuration.load_cert_chain(str(cert), str(key))
    transport, _server = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: QuicServer(configuration=configuration, create_protocol=_Qh3Echo),
        local_addr=("127.0.0.1", 0),
    )
    return int(transport.get_extra_info("sockname")[1])


@contextlib.asynccontextmanager
async def qh3_client(port: int) -> AsyncIterator[Call]:
    configuration = QuicConfiguration(
        is_client=True,
        alpn_protocols=[ALPN],
        idle_timeout=120.0,
        max_stream_data=STREAM_WINDOW,
        max_data=CONNECTION_WINDOW,
    )
    # As the raw aioquic baseline: no certificate check (a self-signed leaf).
    configuration.verify_mode = ssl.CERT_NONE
    async with connect(
        "127.0.0.1", port, configuration=configuration, create_protocol=_Qh3Client
    ) as protocol:
        if not isinstance(protocol, _Qh3Client):
            raise TypeError("unexpected protocol class")
        yield protocol.request


# ---- gRPC ------------------------------------------------------------------------


async def _echo(request: bytes, _context: Any) -> bytes:
    return request


async def _serve_grpc(cert: bytes, key: bytes) -> tuple[int, Any]:
    server = grpc.aio.server(options=_GRPC_OPTIONS)
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Call": grpc.unary_unary_rpc_method_handler(_echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    credentials = grpc.ssl_server_credentials([(key, cert)])
    port = int(server.add_secure_port("127.0.0.1:0", credentials))
    await server.start()
    return port, server


@contextlib.asynccontextmanager
async def grpc_client(port: int, cert: bytes) -> AsyncIterator[Call]:
    credentials = grpc.ssl_channel_credentials(root_certificates=cert)
    options = [*_GRPC_OPTIONS, ("grpc.ssl_target_name_override", "localhost")]
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options) as channel:
        method = channel.unary_unary(_METHOD)

        async def call(data: bytes) -> bytes:
            return bytes(await method(data))

        await call(b"")  # connect and handshake before anything is timed
        yield call


# ---- the server process ------------------------------------------------------------


async def _serve(kind: str, cert: Path, key: Path, ready: Path) -> None:
    cert_pem, key_pem = cert.read_bytes(), key.read_bytes()  # noqa: ASYNC240 - before serving
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    grpc_server: Any = None
    if kind == "qh3":
        port = await _serve_qh3(cert, key)
    else:
        port, grpc_server = await _serve_grpc(cert_pem, key_pem)
    announce(ready, port)
    await stop.wait()
    if grpc_server is not None:
        await grpc_server.stop(None)


def reference_server(
    kind: str, cert: Path, key: Path, workdir: Path
) -> contextlib.AbstractContextManager[tuple[int, int]]:
    """Run the ``kind`` echo server as its own process; yield its port and pid."""
    ready = workdir / f"{kind}-ready.json"
    argv = [sys.executable, "-m", "bench._references", kind, str(cert), str(key), str(ready)]
    return serving_process(argv, ready, f"{kind} echo server")


def main(argv: list[str]) -> int:
    kind, cert, key, ready = argv
    if kind not in KINDS:
        raise SystemExit(f"unknown reference {kind!r}: one of {', '.join(KINDS)}")
    asyncio.run(_serve(kind, Path(cert), Path(key), Path(ready)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
