"""What a node knows about its peers: addresses found, and whether a direct path worked."""

from __future__ import annotations

from dataclasses import dataclass, field

from qpq_p2p._discovery import PeerAddress

__all__ = ["PeerInfo", "PeerTable"]


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """One member we share a group with, as this node sees it.

    Attributes:
        identity_key: the member's identity key.
        groups: the groups we share with it.
        addresses: where it may be reached, and how each was found
            (``static``, ``mdns``, ``server``).
        reachable: True once a direct connection proved it, False after
            the last attempt failed, None when none was made yet.
        connected: a proven connection to it is open now.
        last_error: why the last direct attempt failed, if it did.
    """

    identity_key: bytes
    groups: tuple[bytes, ...]
    addresses: tuple[PeerAddress, ...]
    reachable: bool | None
    connected: bool
    last_error: str | None


@dataclass(slots=True)
class _Record:
    addresses: tuple[PeerAddress, ...] = ()
    reachable: bool | None = None
    last_error: str | None = None
    failed_at: float | None = None


@dataclass(slots=True)
class PeerTable:
    """Addresses and reachability per identity key; time comes from the caller."""

    backoff_seconds: float
    _records: dict[bytes, _Record] = field(default_factory=dict)

    def _record(self, identity_key: bytes) -> _Record:
        return self._records.setdefault(identity_key, _Record())

    def found(self, identity_key: bytes, addresses: tuple[PeerAddress, ...]) -> None:
        """Remember the addresses the last resolution returned."""
        self._record(identity_key).addresses = addresses

    def addresses(self, identity_key: bytes) -> tuple[PeerAddress, ...]:
        """The addresses the last resolution returned."""
        record = self._records.get(identity_key)
        return () if record is None else record.addresses

    def reached(self, identity_key: bytes) -> None:
        """A direct connection to the peer was proven."""
        record = self._record(identity_key)
        record.reachable, record.last_error, record.failed_at = True, None, None

    def failed(self, identity_key: bytes, reason: str, now: float) -> None:
        """A direct attempt failed; messages skip the peer for the backoff period."""
        record = self._record(identity_key)
        record.reachable, record.last_error, record.failed_at = False, reason, now

    def backing_off(self, identity_key: bytes, now: float) -> bool:
        """True while a recent failure says: go through the server."""
        record = self._records.get(identity_key)
        return (
            record is not None
            and record.failed_at is not None
            and now - record.failed_at < self.backoff_seconds
        )

    def info(self, identity_key: bytes, groups: tuple[bytes, ...], *, connected: bool) -> PeerInfo:
        """What is known about ``identity_key``."""
        record = self._records.get(identity_key, _Record())
        return PeerInfo(
            identity_key=identity_key,
            groups=groups,
            addresses=record.addresses,
            reachable=True if connected else record.reachable,
            connected=connected,
            last_error=record.last_error,
        )
