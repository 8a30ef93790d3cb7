"""Input caps applied before any bytes reach the Rust decoder.

The TLS decoder allocates a vector's declared length before it reads it
(notes §4b), so oversized input is refused here. The values match
``qpq_proto``'s default limits (1 MiB KeyPackage, 5 MiB payload) with room
for framing.
"""

from __future__ import annotations

from qpq_core.errors import MalformedMlsMessageError

__all__ = ["MAX_KEY_PACKAGE_BYTES", "MAX_MESSAGE_BYTES", "check_size"]

#: Largest KeyPackage accepted (``Limits.max_key_package_bytes``).
MAX_KEY_PACKAGE_BYTES = 1024 * 1024
#: Largest MLS message accepted: a 5 MiB payload plus framing.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


def check_size(data: bytes | bytearray | memoryview, limit: int) -> bytes:
    """Return ``data`` as ``bytes`` if it fits, else raise."""
    if len(data) > limit:
        raise MalformedMlsMessageError(f"MLS message of {len(data)} bytes exceeds {limit}")
    return data if type(data) is bytes else bytes(data)
