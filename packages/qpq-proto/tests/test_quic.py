"""The client-side QUIC adapter against a small in-process server on 127.0.0.1.

The server half is a few lines of aioquic driving :class:`qpq_proto.ServerCall`
(the real qpq server is tested in its own package through this same adapter);
what is checked here is the adapter's own contract: calls and streams through
the state machines, raw streams, and a certificate that is checked before any
byte of a call leaves.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer, serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent, StreamDataReceived
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import qpq_proto as qp
from qpq_proto.errors import (
    ConnectionFailedError,
    LocalProtocolError,
    MalformedMessageError,
    NotFoundError,
    RateLimitedError,
    UnavailableError,
)
from qpq_proto.quic import Transport, call_result, certificate_fingerprint, subscribe

ALPN = "qpq-test/1"


@dataclass
class Certificate:
    pem: str
    key_pem: str
    der: bytes


def make_certificate(name: str = "localhost") -> Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return Certificate(
        pem=certificate.public_bytes(serialization.Encoding.PEM).decode(),
        key_pem=key_pem,
        der=certificate.public_bytes(serialization.Encoding.DER),
    )


class _Server(QuicConnectionProtocol):
    """Answers Health, refuses ResolveUser, streams two envelopes for Subscribe,
    and echoes bytes that are not a request. Counts the requests it decoded.

    A Subscribe with the token ``refuse`` is refused (``unavailable``); with
    ``fail``, one envelope is pushed and the stream ends with an error event."""

    requests: list[qp.Request]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: dict[int, qp.ServerCall] = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        if not isinstance(event, StreamDataReceived):
            return
        if event.data.startswith(b"echo:"):
            self._quic.send_stream_data(event.stream_id, event.data, end_stream=True)
            self.transmit()
            return
        call = self.calls.setdefault(event.stream_id, qp.ServerCall())
        for call_event in call.receive_data(event.data, event.end_stream):
            if isinstance(call_event, qp.RequestReceived):
                _Server.requests.append(call_event.request)
                self._answer(event.stream_id, call, call_event.request)
        self.transmit()

    def _answer(self, stream_id: int, call: qp.ServerCall, request: qp.Request) -> None:
        send = self._quic.send_stream_data
        if isinstance(request.call, qp.Health):
            send(stream_id, call.respond(qp.HealthStatus("ok", "t", 1, "ok")), end_stream=True)
        elif isinstance(request.call, qp.Subscribe) and request.token == "refuse":
            refusal = qp.ErrorResponse.from_exception(UnavailableError("shutting down"))
            send(stream_id, call.respond(refusal), end_stream=True)
        elif isinstance(request.call, qp.Subscribe) and request.token == "fail":
            send(stream_id, call.respond(qp.Subscribed()), end_stream=False)
            send(stream_id, call.push(qp.Envelope(1, bytes(32), b"m", 1)), end_stream=False)
            error = qp.ErrorResponse.from_exception(RateLimitedError("replaced"))
            send(stream_id, call.push(error), end_stream=True)
        elif isinstance(request.call, qp.Subscribe):
            send(stream_id, call.respond(qp.Subscribed()), end_stream=False)
            for seq in (1, 2):
                send(stream_id, call.push(qp.Envelope(seq, bytes(32), b"m", seq)), end_stream=False)
            call.close()
            send(stream_id, b"", end_stream=True)
        else:
            refusal = qp.ErrorResponse.from_exception(NotFoundError("no such user"))
            send(stream_id, call.respond(refusal), end_stream=True)


@asynccontextmanager
async def serve_locally(
    tmp_path: Path, alpn: str, protocol: type[QuicConnectionProtocol] = _Server
) -> AsyncIterator[tuple[int, Certificate]]:
    """A QUIC server of ``protocol`` on 127.0.0.1: its port and certificate."""
    certificate = make_certificate()
    (tmp_path / "cert.pem").write_text(certificate.pem)
    (tmp_path / "key.pem").write_text(certificate.key_pem)
    configuration = QuicConfiguration(is_client=False, alpn_protocols=[alpn])
    configuration.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    _Server.requests = []
    quic_server: QuicServer = await serve(
        "127.0.0.1", 0, configuration=configuration, create_protocol=protocol
    )
    port = quic_server._transport.get_extra_info("sockname")[1]
    try:
        yield port, certificate
    finally:
        quic_server.close()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[int, Certificate]]:
    async with serve_locally(tmp_path, ALPN) as served:
        yield served


@pytest.fixture
async def peer(tmp_path: Path) -> AsyncIterator[tuple[int, Certificate]]:
    """The same server speaking ALPN qpq-p2p/1, as another client's listener does."""
    async with serve_locally(tmp_path, qp.PEER_ALPN) as served:
        yield served


async def _open(port: int, **trust: Any) -> Transport:
    return await Transport.open("127.0.0.1", port, alpn=ALPN, connect_timeout=5, **trust)


async def test_calls_streams_and_raw_bytes_over_a_pinned_connection(
    server: tuple[int, Certificate],
) -> None:
    port, certificate = server
    transport = await _open(port, pin=certificate_fingerprint(certificate.der))
    try:
        assert transport.peer_certificate_der() == certificate.der
        health = await transport.call(qp.Request(qp.Health()), answer_within=5)
        assert health == qp.HealthStatus("ok", "t", 1, "ok")
        refused = await transport.call(qp.Request(qp.ResolveUser("bob"), "t"), answer_within=5)
        assert isinstance(refused, qp.ErrorResponse)
        assert isinstance(refused.to_exception(), NotFoundError)
        streamed = [e async for e in transport.stream(qp.Request(qp.Subscribe(), "t"))]
        assert streamed == [
            qp.Subscribed(),
            qp.Envelope(1, bytes(32), b"m", 1),
            qp.Envelope(2, bytes(32), b"m", 2),
        ]
        assert await transport.raw(b"echo:abc") == b"echo:abc"
        assert transport.closed_reason is None
    finally:
        await transport.close()
    assert [type(r.call) for r in _Server.requests] == [qp.Health, qp.ResolveUser, qp.Subscribe]


async def test_call_result_returns_the_result_or_raises_the_coded_error(
    server: tuple[int, Certificate],
) -> None:
    port, certificate = server
    transport = await _open(port, pin=certificate_fingerprint(certificate.der))
    try:
        health = qp.Request(qp.Health())
        status = await call_result(transport, health, qp.HealthStatus, answer_within=5)
        assert status == qp.HealthStatus("ok", "t", 1, "ok")
        with pytest.raises(NotFoundError, match="no such user"):
            await call_result(
                transport, qp.Request(qp.ResolveUser("bob"), "t"), qp.UserKey, answer_within=5
            )
        with pytest.raises(MalformedMessageError, match="HealthStatus does not answer Health"):
            await call_result(transport, health, qp.Done, answer_within=5)
    finally:
        await transport.close()


async def test_subscribe_yields_envelopes_and_raises_a_refusal_or_an_error_event(
    server: tuple[int, Certificate],
) -> None:
    port, certificate = server
    transport = await _open(port, pin=certificate_fingerprint(certificate.der))
    try:
        async with subscribe(transport, qp.Request(qp.Subscribe(), "t")) as envelopes:
            assert [e.seq async for e in envelopes] == [1, 2]
        with pytest.raises(UnavailableError, match="shutting down"):
            async with subscribe(transport, qp.Request(qp.Subscribe(), "refuse")):
                pass
        async with subscribe(transport, qp.Request(qp.Subscribe(), "fail")) as envelopes:
            assert (await anext(envelopes)).seq == 1
            with pytest.raises(RateLimitedError, match="replaced"):
                await anext(envelopes)
        with pytest.raises(LocalProtocolError, match="Health opens no subscribe stream"):
            async with subscribe(transport, qp.Request(qp.Health())):
                pass
    finally:
        await transport.close()
    assert [r.token for r in _Server.requests] == ["t", "refuse", "fail"]


async def test_a_ca_that_issued_the_certificate_is_trusted(server: tuple[int, Certificate]) -> None:
    port, certificate = server
    transport = await _open(port, ca_pem=certificate.pem, server_name="localhost")
    try:
        assert isinstance(
            await transport.call(qp.Request(qp.Health()), answer_within=5), qp.HealthStatus
        )
    finally:
        await transport.close()


@pytest.mark.parametrize("trust", ["wrong pin", "other ca"])
async def test_a_certificate_that_does_not_match_is_refused_before_any_request(
    server: tuple[int, Certificate], trust: str
) -> None:
    port, _certificate = server
    other = make_certificate()
    option = (
        {"pin": certificate_fingerprint(other.der)}
        if trust == "wrong pin"
        else {"ca_pem": other.pem, "server_name": "localhost"}
    )
    with pytest.raises(ConnectionFailedError, match=r"the server at 127\.0\.0\.1"):
        await _open(port, **option)
    assert _Server.requests == []


async def test_no_answer_and_both_trusts_are_clear_errors(server: tuple[int, Certificate]) -> None:
    port, certificate = server
    with pytest.raises(ValueError, match="not both"):
        await _open(port, pin="0" * 64, ca_pem=certificate.pem)
    # A UDP socket that never answers: the handshake times out.
    silent = await asyncio.get_running_loop().create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    silent_port = silent[0].get_extra_info("sockname")[1]
    try:
        with pytest.raises(ConnectionFailedError, match="no answer from the server"):
            await Transport.open(
                "127.0.0.1", silent_port, alpn=ALPN, pin="0" * 64, connect_timeout=0.3
            )
    finally:
        silent[0].close()


async def test_an_in_band_identity_proof_connection_carries_peer_calls_only(
    peer: tuple[int, Certificate],
) -> None:
    port, certificate = peer
    transport = await Transport.open(
        "127.0.0.1", port, alpn=qp.PEER_ALPN, in_band_identity_proof=True, connect_timeout=5
    )
    try:
        # No CA or pin checked it: the certificate is what the peers bind their proofs to.
        assert transport.peer_certificate_der() == certificate.der
        answer = await transport.call(qp.Request(qp.PeerChallenge()), answer_within=5)
        assert isinstance(answer, qp.ErrorResponse)  # this test server refuses every other call
        for call in (qp.Health(), qp.ResolveUser("bob"), qp.Subscribe()):
            with pytest.raises(LocalProtocolError, match="carries peer calls only"):
                await transport.call(qp.Request(call, "token"), answer_within=5)
        with pytest.raises(LocalProtocolError, match="carries peer calls only"):
            await anext(transport.stream(qp.Request(qp.Subscribe(), "token")))
    finally:
        await transport.close()
    # Nothing but the peer call left: no token went over the unchecked connection.
    assert [type(r.call) for r in _Server.requests] == [qp.PeerChallenge]


@pytest.mark.parametrize(
    "options",
    [
        {"alpn": qp.ALPN},
        {"alpn": ALPN},
        {"alpn": qp.PEER_ALPN, "pin": "0" * 64},
        {"alpn": qp.PEER_ALPN, "ca_pem": "-----BEGIN CERTIFICATE-----"},
    ],
    ids=["server-alpn", "other-alpn", "with-pin", "with-ca"],
)
async def test_in_band_identity_proof_is_refused_outside_peer_connections(
    server: tuple[int, Certificate], options: dict[str, Any]
) -> None:
    # Refused before any packet: a connection to a server always checks its certificate.
    port, _certificate = server
    with pytest.raises(ValueError, match="in_band_identity_proof"):
        await Transport.open("127.0.0.1", port, in_band_identity_proof=True, **options)
