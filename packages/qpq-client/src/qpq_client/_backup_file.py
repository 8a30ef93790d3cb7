"""The profile backup file: a versioned header, then the contents sealed under a passphrase.

Layout (docs/backup.md), all integers big-endian::

    magic        8 bytes  b"QPQBKUP\\x00"
    version      1 byte   1
    kdf          1 byte   1 = scrypt (RFC 7914)
    log2_n       1 byte   scrypt cost N = 2**log2_n
    r            1 byte   scrypt block size
    p            1 byte   scrypt parallelism
    salt        16 bytes  random, per file
    aead         1 byte   1 = ChaCha20-Poly1305 (RFC 8439)
    nonce       12 bytes  random, per file
    ciphertext   the rest: AEAD(key, nonce, contents, associated data = the header above)

The key is scrypt(passphrase, salt, N, r, p) of 32 bytes. The header is the
AEAD's associated data, so a changed parameter, salt or version fails the
tag as surely as a changed ciphertext: a wrong passphrase and a damaged
file are told apart from a good one, never from each other. The contents
are UTF-8 JSON (:mod:`qpq_client._backup`). Sealing and opening are pure
functions of bytes (no files): the caller writes and reads.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from qpq_client._errors import BackupError

__all__ = [
    "DEFAULT_KDF",
    "FORMAT_VERSION",
    "MAGIC",
    "ScryptParams",
    "derive_key",
    "open_sealed",
    "seal",
]

MAGIC = b"QPQBKUP\x00"
FORMAT_VERSION = 1
_KDF_SCRYPT = 1
_AEAD_CHACHA20_POLY1305 = 1
_SALT_BYTES = 16
_NONCE_BYTES = 12
_HEADER = struct.Struct(f">8sBBBBB{_SALT_BYTES}sB{_NONCE_BYTES}s")
_TAG_BYTES = 16
#: The costliest parameters a file may ask for: a crafted header must not make
#: opening it take the machine's memory (scrypt needs 128 * r * N bytes).
_MAX_LOG2_N = 22
_MAX_R = 16
_MAX_P = 4
_MAX_MEMORY = 1 << 31


@dataclass(frozen=True, slots=True)
class ScryptParams:
    """scrypt's cost parameters (RFC 7914 §2): N = 2**log2_n, r, p."""

    log2_n: int
    r: int
    p: int

    @property
    def memory_bytes(self) -> int:
        """What one evaluation needs: 128 * r * N bytes."""
        return 128 * self.r * (1 << self.log2_n)


#: N = 2**17, r = 8, p = 1: 128 MiB and 0.6 s per evaluation on the 2-core
#: development machine (docs/security.md, "A stolen backup file"): the
#: OWASP Password Storage Cheat Sheet's minimum for scrypt.
DEFAULT_KDF = ScryptParams(log2_n=17, r=8, p=1)


def derive_key(passphrase: str, salt: bytes, params: ScryptParams) -> bytes:
    """The 32-byte file key: scrypt over the passphrase's UTF-8 bytes."""
    return hashlib.scrypt(
        passphrase.encode("utf-8"),
        salt=salt,
        n=1 << params.log2_n,
        r=params.r,
        p=params.p,
        maxmem=params.memory_bytes + (1 << 20),
        dklen=32,
    )


def seal(contents: bytes, passphrase: str, params: ScryptParams = DEFAULT_KDF) -> bytes:
    """The whole file for ``contents`` under ``passphrase``."""
    if not passphrase:
        raise BackupError("the backup passphrase must not be empty")
    salt = os.urandom(_SALT_BYTES)
    nonce = os.urandom(_NONCE_BYTES)
    header = _HEADER.pack(
        MAGIC,
        FORMAT_VERSION,
        _KDF_SCRYPT,
        params.log2_n,
        params.r,
        params.p,
        salt,
        _AEAD_CHACHA20_POLY1305,
        nonce,
    )
    key = derive_key(passphrase, salt, params)
    return header + ChaCha20Poly1305(key).encrypt(nonce, contents, header)


def open_sealed(data: bytes, passphrase: str) -> bytes:
    """The contents of a backup file.

    Raises:
        BackupError: not a qpq backup, a version or algorithm this client
            does not know, or the passphrase is wrong or the file was
            changed or cut short (one line each).
    """
    if len(data) < _HEADER.size or not data.startswith(MAGIC):
        raise BackupError("not a qpq backup file (or cut short before its header ends)")
    _magic, version, kdf, log2_n, r, p, salt, aead, nonce = _HEADER.unpack_from(data)
    if version != FORMAT_VERSION:
        raise BackupError(
            f"backup format version {version}: this client reads version {FORMAT_VERSION}"
        )
    if kdf != _KDF_SCRYPT or aead != _AEAD_CHACHA20_POLY1305:
        raise BackupError("the backup names a key derivation or cipher this client does not know")
    params = ScryptParams(log2_n, r, p)
    if not (
        1 <= log2_n <= _MAX_LOG2_N
        and 1 <= r <= _MAX_R
        and 1 <= p <= _MAX_P
        and params.memory_bytes <= _MAX_MEMORY
    ):
        raise BackupError("the backup's key derivation parameters are out of range: damaged file")
    if len(data) < _HEADER.size + _TAG_BYTES:
        raise BackupError("the backup is cut short")
    key = derive_key(passphrase, salt, params)
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, data[_HEADER.size :], data[: _HEADER.size])
    except InvalidTag:
        raise BackupError("wrong backup passphrase, or the file was changed or cut short") from None
