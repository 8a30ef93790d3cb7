"""What both storage backends make of their rows, and the refusals they raise, written once.

The SQL differs between SQLCipher and PostgreSQL; the records built from
the rows and the errors a rule raises do not.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from qpq_proto import Endpoint, Envelope
from qpq_proto.errors import (
    EpochConflictError,
    InvalidArgumentError,
    NotFoundError,
    QuotaExceededError,
)
from qpq_server._storage import StoredEndpoints

__all__ = [
    "DELETION_NOTICE",
    "ENVELOPE_OVERHEAD",
    "GAP_NOTICE",
    "MESSAGE",
    "decode_endpoints",
    "encode_endpoints",
    "envelopes",
    "epoch_conflict",
    "fetched_bytes",
    "groups_quota_exceeded",
    "key_package_limits",
    "queued_bytes_exceeded",
]

#: Envelope bytes on the wire besides the payload (seq, sender, time, pointers).
ENVELOPE_OVERHEAD = 96

#: ``payloads.gap``: what a queue entry is besides a message. A gap notice's
#: payload row holds the group id it is about; a deletion notice's holds the
#: identity key of the deleted account (and ``group_id`` its group).
MESSAGE = 0
GAP_NOTICE = 1
DELETION_NOTICE = 2


def fetched_bytes(lengths: Iterable[int], max_bytes: int) -> int:
    """The payload bytes (framing of each envelope included) that :func:`envelopes`
    returns for rows whose payloads are ``lengths`` long, in seq order."""
    used = 0
    for length in lengths:
        size = int(length) + ENVELOPE_OVERHEAD
        if used and used + size > max_bytes:
            break
        used += size
    return used


def envelopes(rows: Iterable[Any], max_bytes: int) -> list[Envelope]:
    """Envelopes of ``(seq, sender, payload, enqueued_at_ms, gap, group_id,
    group_info_digest)`` rows in seq order: at least one if any, then as many
    as fit in about ``max_bytes`` of payload. The last two are NULL in rows
    stored before the server recorded them, and read as empty."""
    found: list[Envelope] = []
    used = 0
    for seq, sender, payload, enqueued_at_ms, gap, group_id, digest in rows:
        size = len(payload) + ENVELOPE_OVERHEAD
        if found and used + size > max_bytes:
            break
        used += size
        is_gap = gap == GAP_NOTICE
        found.append(
            Envelope(
                seq=int(seq),
                sender=bytes(sender),
                payload=b"" if is_gap else bytes(payload),
                enqueued_at_ms=int(enqueued_at_ms),
                gap_group_id=bytes(payload) if is_gap else b"",
                group_id=b"" if is_gap or group_id is None else bytes(group_id),
                group_info_digest=b"" if digest is None else bytes(digest),
                account_deleted=bytes(payload) if gap == DELETION_NOTICE else b"",
            )
        )
    return found


def encode_endpoints(endpoints: StoredEndpoints) -> tuple[str, str | None, int | None]:
    """The endpoints row's columns: the list as JSON, the observed host and port."""
    encoded = json.dumps([[e.host, e.port] for e in endpoints.endpoints])
    observed = endpoints.observed
    return encoded, observed.host if observed else None, observed.port if observed else None


def decode_endpoints(row: Any) -> StoredEndpoints:
    """The record of an ``(endpoints, observed_host, observed_port)`` row."""
    endpoints = tuple(Endpoint(host=str(h), port=int(p)) for h, p in json.loads(row[0]))
    observed = None if row[1] is None else Endpoint(host=str(row[1]), port=int(row[2]))
    return StoredEndpoints(endpoints=endpoints, observed=observed)


def key_package_limits(
    stored: int, stored_bytes: int, adding: list[bytes], max_stored: int, max_bytes: int
) -> None:
    """Refuse an upload that would take the identity over its count or its bytes."""
    if stored + len(adding) > max_stored:
        raise InvalidArgumentError(
            f"at most {max_stored} KeyPackages may be stored per identity", field="packages"
        )
    if stored_bytes + sum(len(p) for p in adding) > max_bytes:
        raise QuotaExceededError(
            f"this identity's stored KeyPackages would hold more than its quota of "
            f"{max_bytes} bytes on the server",
            field="packages",
        )


def queued_bytes_exceeded(quota_bytes: int) -> QuotaExceededError:
    return QuotaExceededError(
        "this account's messages not yet acknowledged by their recipients would hold "
        f"more than its quota of {quota_bytes} bytes on the server",
        field="payload",
    )


def groups_quota_exceeded(max_created: int) -> QuotaExceededError:
    return QuotaExceededError(
        f"this account created {max_created} groups that are still in use, its quota "
        "on the server (an unused group is removed after the retention period)",
        field="group_info",
    )


def epoch_conflict(
    epoch: int, current: int | None, accepted: bytes | None
) -> EpochConflictError | NotFoundError:
    """A change verified at ``epoch`` came too late: the group is at ``current`` (None:
    gone), after another commit, or, in the same epoch, after another proposal."""
    if current is None:
        return NotFoundError("no such group", field="group_id")
    if current == epoch:
        return EpochConflictError(
            f"the group changed in epoch {epoch} (another proposal was stored); send again",
            field="epoch",
            epoch=current,
        )
    return EpochConflictError(
        f"another commit was accepted for epoch {epoch}; the group is at epoch {current}",
        field="epoch",
        accepted_commit=b"" if accepted is None else accepted,
        epoch=current,
    )
