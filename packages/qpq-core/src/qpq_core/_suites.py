"""The two MLS ciphersuites qpq speaks, chosen per group.

A group's ciphersuite is fixed when it is created (RFC 9420 §11) and every
KeyPackage added to it must be of that suite (RFC 9420 §12.1.1), so clients
publish KeyPackages of each suite and a claim names the suite it wants
(docs/mls.md, "Ciphersuites").
"""

from __future__ import annotations

import enum

__all__ = ["Suite"]


class Suite(enum.IntEnum):
    """An MLS ciphersuite, valued by its RFC 9420 code point.

    Attributes:
        DEFAULT: ``MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519`` (0x0001),
            every group's suite unless another is chosen.
        XWING: ``MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519`` (0x004D,
            draft-ietf-mls-pq-ciphersuites, a provisional code point): HPKE
            with X-Wing (ML-KEM-768 combined with X25519), so that recorded
            traffic stays closed to whoever breaks X25519 later. Signatures
            stay Ed25519: authentication is not post-quantum
            (docs/security.md, "Post-quantum groups").
    """

    DEFAULT = 0x0001
    XWING = 0x004D

    @property
    def label(self) -> str:
        """The short name users type and see: ``default`` or ``pq``."""
        return _LABELS[self]

    @classmethod
    def from_label(cls, label: str) -> Suite:
        """The suite named ``default`` or ``pq`` (as :attr:`label` gives).

        Raises:
            ValueError: any other name.
        """
        for suite, name in _LABELS.items():
            if name == label:
                return suite
        names = ", ".join(_LABELS.values())
        raise ValueError(f"unknown ciphersuite {label!r} (choose one of: {names})")


_LABELS: dict[Suite, str] = {Suite.DEFAULT: "default", Suite.XWING: "pq"}
