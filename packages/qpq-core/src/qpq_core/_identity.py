"""Ed25519 identities and signature checks."""

from __future__ import annotations

from qpq_core._mls import Identity, verify_signature

__all__ = ["Identity", "verify_signature"]
