"""The raw QUIC echo every transport baseline is measured against, and its process.

qpq's calls are measured beside the same exchange without qpq: one new
bidirectional stream per call, request and FIN, answer and FIN. The echo's
logic is here once, without I/O (:class:`EchoStreams` for the server,
:class:`PendingRequests` for the client); ``bench_server.py`` drives it over
aioquic and ``_references.py`` over qh3 (the same API), each in a few lines
of protocol class. :func:`serving_process` runs such a server as its own
process, as qpq-server runs, and :func:`announce` is how that process says
where it listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from qpq_proto import DEFAULT_LIMITS

__all__ = [
    "CONNECTION_WINDOW",
    "SINK_MARKER",
    "STREAM_WINDOW",
    "EchoStreams",
    "PendingRequests",
    "announce",
    "serving_process",
]

#: A request starting with this is answered with its length (8 bytes), not echoed:
#: an upload with a small answer, the traffic shape of a Publish.
SINK_MARKER = b"SINK"
#: The flow-control windows qpq-server and its test client use, so the raw
#: echo moves bytes under the same credit.
STREAM_WINDOW = DEFAULT_LIMITS.max_message_bytes
CONNECTION_WINDOW = 2 * DEFAULT_LIMITS.max_message_bytes


class EchoStreams:
    """The server side: each client-initiated bidirectional stream, buffered
    until it ends, then answered (echoed, or its length for a sink request)."""

    def __init__(self) -> None:
        self._buffers: dict[int, bytearray] = {}

    def received(self, stream_id: int, data: bytes, end_stream: bool) -> bytes | None:
        """The answer to send with FIN once the stream ended; None before."""
        if stream_id % 4 != 0:
            return None  # not a client-initiated bidirectional stream
        buffer = self._buffers.setdefault(stream_id, bytearray())
        buffer += data
        if not end_stream:
            return None
        del self._buffers[stream_id]
        if buffer[: len(SINK_MARKER)] == SINK_MARKER:
            return len(buffer).to_bytes(8, "big")
        return bytes(buffer)

    def reset(self, stream_id: int) -> None:
        self._buffers.pop(stream_id, None)


class PendingRequests:
    """The client side: each request's answer, collected until its stream ends."""

    def __init__(self) -> None:
        self._pending: dict[int, tuple[bytearray, asyncio.Future[bytes]]] = {}

    def open(self, stream_id: int) -> asyncio.Future[bytes]:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[stream_id] = (bytearray(), future)
        return future

    def received(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        entry = self._pending.get(stream_id)
        if entry is None:
            return
        entry[0].extend(data)
        if end_stream:
            del self._pending[stream_id]
            if not entry[1].done():
                entry[1].set_result(bytes(entry[0]))

    def lost(self, reason: str) -> None:
        """The connection ended: every request still waiting fails."""
        for _buffer, future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError(reason))
        self._pending.clear()


def announce(ready: Path, port: int) -> None:
    """Write the port a server process listens on, atomically, where its parent waits."""
    tmp = ready.with_name(ready.name + ".tmp")
    tmp.write_text(json.dumps({"port": port}))
    tmp.replace(ready)


@contextlib.contextmanager
def serving_process(argv: Sequence[str], ready: Path, what: str) -> Iterator[tuple[int, int]]:
    """Run ``argv`` (a server that :func:`announce`s on ``ready``); yield its port and pid.

    It is stopped (SIGTERM, then SIGKILL after 10 s) when the block ends.
    """
    process = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL)  # noqa: S603 - our scripts
    try:
        deadline = time.monotonic() + 30.0
        while not ready.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {what} did not start")
            time.sleep(0.02)
        yield int(json.loads(ready.read_text())["port"]), process.pid
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(10.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
