"""Protocol limits: one frozen dataclass, defaults from the design brief.

Every size and rate bound of qpq lives here so that the codec, the server and
the client agree on them. The server may be configured with other values; the
codec takes the instance it should enforce.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_LIMITS", "IDENTITY_KEY_BYTES", "PROTOCOL_VERSION", "Limits"]

#: The one protocol version this package speaks (``Request.version``).
PROTOCOL_VERSION = 1

#: Ed25519 public key length; also every recipient/sender key on the wire.
IDENTITY_KEY_BYTES = 32

_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds enforced on the wire and by the server.

    Attributes:
        max_payload_bytes: a published MLS message, Welcome or GroupInfo.
        max_key_package_bytes: one uploaded KeyPackage.
        max_key_packages_per_upload: packages in one upload batch.
        max_recipients: members one group may have, so the recipients of one publish.
        max_username_bytes: UTF-8 bytes of a username.
        max_group_id_bytes: bytes of an MLS group id.
        max_fetch_limit: messages one fetch may ask for.
        max_fetch_wait_ms: the longest a fetchWait may wait.
        max_endpoints: P2P endpoints one identity may publish.
        max_resolve_identities: identity keys one ResolveIdentities may ask for.
        max_message_bytes: one framed Cap'n Proto message in either direction;
            servers fill fetch results only up to this size.
        nesting_limit: Cap'n Proto pointer nesting allowed when decoding.
        queue_depth: undelivered messages one recipient may hold.
        queue_depth_per_sender: of those, how many one sender may have queued
            (so no one sender fills a queue; the rest get a gap notice).
        rate_per_second: token-bucket refill rate per identity and per address.
        rate_burst: token-bucket capacity.
        message_ttl_seconds: how long an unacknowledged message is kept.
    """

    max_payload_bytes: int = 5 * _MIB
    max_key_package_bytes: int = 1 * _MIB
    max_key_packages_per_upload: int = 1000
    max_recipients: int = 10_000
    max_username_bytes: int = 64
    max_group_id_bytes: int = 256
    max_fetch_limit: int = 1000
    max_fetch_wait_ms: int = 60_000
    max_endpoints: int = 16
    max_resolve_identities: int = 1000
    max_message_bytes: int = 8 * _MIB
    nesting_limit: int = 16
    queue_depth: int = 10_000
    queue_depth_per_sender: int = 2_500
    rate_per_second: float = 50.0
    rate_burst: int = 100
    message_ttl_seconds: int = 7 * 24 * 3600

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            if getattr(self, name) <= 0:
                raise ValueError(f"limit {name} must be positive")
        if self.max_message_bytes < self.max_payload_bytes + 64 * 1024:
            raise ValueError("max_message_bytes must leave room for a full payload")

    @property
    def traversal_limit_words(self) -> int:
        """Cap'n Proto traversal limit matching ``max_message_bytes``."""
        return self.max_message_bytes // 8 + 1024


DEFAULT_LIMITS = Limits()
