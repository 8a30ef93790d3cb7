"""Input caps applied before any bytes reach the Rust decoder.

The TLS decoder allocates a vector's declared length before it reads it, so
oversized input is refused first (docs/mls.md, "Input size caps"). The values
are qpq_proto's default limits; the extension reads them from here.
"""

from __future__ import annotations

from qpq_proto import DEFAULT_LIMITS

__all__ = ["MAX_KEY_PACKAGE_BYTES", "MAX_MESSAGE_BYTES"]

#: Largest KeyPackage accepted (``Limits.max_key_package_bytes``).
MAX_KEY_PACKAGE_BYTES: int = DEFAULT_LIMITS.max_key_package_bytes
#: Largest MLS message accepted (``Limits.max_message_bytes``): a full payload
#: plus framing.
MAX_MESSAGE_BYTES: int = DEFAULT_LIMITS.max_message_bytes
