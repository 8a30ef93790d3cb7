"""What a call's answer may take: the bytes reserved before it runs, the tokens it costs.

The transport serves a call only once room for its answer is reserved in
the connection's answer window and the server's answer budget
(:mod:`qpq_proto.quic`): :func:`answer_bound` is that reservation, the most
bytes the call's answer can take, so that a client that asks and never
reads waits for itself before the server reads anything for it. FetchWait
reserves little while it waits and a whole message before it reads
(``CallContext.reserve_answer``).

An answer is also paid for by its size: one rate-limit token per
:data:`ANSWER_BYTES_PER_TOKEN` beyond the first (:func:`answer_tokens`),
billed once it is sent, so that fetching the same eight megabytes over and
over costs what it makes the server read and send, not one token a call.
"""

from __future__ import annotations

import math
from typing import Any

from qpq_proto import (
    FetchGroupInfo,
    FetchKeyPackage,
    Limits,
    ResolveEndpoints,
    UploadKeyPackages,
)

__all__ = [
    "ANSWER_BYTES_PER_TOKEN",
    "SMALL_ANSWER_BYTES",
    "answer_bound",
    "answer_tokens",
]

#: Bytes of answer one rate-limit token pays for: a Fetch of 8 MiB costs 128.
ANSWER_BYTES_PER_TOKEN = 64 * 1024
#: An answer of fixed shape (Done, Published, a coded error, a nonce, a name)
#: takes less than this, framing included.
SMALL_ANSWER_BYTES = 4 * 1024
#: One fingerprint in an answer to UploadKeyPackages (32 bytes and its pointer).
_FINGERPRINT_BYTES = 48
#: One endpoint in an answer to ResolveEndpoints (a host of at most 253 bytes).
_ENDPOINT_BYTES = 320


def answer_bound(call: Any, limits: Limits) -> int:
    """The most bytes the answer to ``call`` can take, reserved before it is served."""
    if isinstance(call, FetchGroupInfo):
        return limits.max_message_bytes
    if isinstance(call, FetchKeyPackage):
        return limits.max_key_package_bytes + SMALL_ANSWER_BYTES
    if isinstance(call, UploadKeyPackages):
        return SMALL_ANSWER_BYTES + _FINGERPRINT_BYTES * len(call.packages)
    if isinstance(call, ResolveEndpoints):
        return SMALL_ANSWER_BYTES + _ENDPOINT_BYTES * (limits.max_endpoints + 1)
    return SMALL_ANSWER_BYTES


def answer_tokens(size: int) -> float:
    """Rate-limit tokens an answer of ``size`` bytes costs beyond its call's first one."""
    return float(max(0, math.ceil(size / ANSWER_BYTES_PER_TOKEN) - 1))
