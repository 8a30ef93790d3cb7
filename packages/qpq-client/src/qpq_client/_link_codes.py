"""Link codes and the two payloads of a link mailbox, without I/O.

A new device shows a short code (60 random bits, 12 characters of an
unambiguous base32 alphabet, ``ABCD-EFGH-JKMN``); its owner types it on a
device of the account (docs/protocol.md, "Linking a device"). The server
sees only the SHA-256 of the code (the mailbox name), never the code:

- the request (new device -> approver) names the device key, its X25519
  key and its name, and carries an HMAC keyed by the code: the server, not
  knowing the code, cannot put a key of its own in a request;
- the answer (approver -> new device) is sealed to that X25519 key
  (X25519, HKDF-SHA256 with the code as salt, ChaCha20-Poly1305; the
  shape of HPKE's base mode, RFC 9180): the certificate, the account key's
  seed, the username, the contacts, the group names and, when asked for,
  the most recent history that fits.

Every check raises :class:`LinkError`, whose message is safe to show.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from qpq_client._errors import LinkError

__all__ = [
    "LINK_URI_PREFIX",
    "LinkAnswer",
    "LinkRequestBody",
    "fingerprint",
    "mailbox_of",
    "new_code",
    "normalize_code",
    "open_answer",
    "open_request",
    "seal_answer",
    "seal_request",
]

#: What a link code's URI starts with (``qpq://link/ABCD-EFGH-JKMN``).
LINK_URI_PREFIX = "qpq://link/"
#: Crockford's base32 without I, L, O, U: nothing two people read alike.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CODE_CHARS = 12
_VERSION = 1
_KEY = 32


def new_code() -> str:
    """A fresh code: 60 random bits, grouped by four."""
    text = "".join(secrets.choice(_ALPHABET) for _ in range(_CODE_CHARS))
    return "-".join(text[i : i + 4] for i in range(0, _CODE_CHARS, 4))


def normalize_code(text: str) -> str:
    """The code a person typed or pasted (or its URI), in canonical form."""
    text = text.strip()
    if text.lower().startswith(LINK_URI_PREFIX):
        text = text[len(LINK_URI_PREFIX) :]
    raw = text.upper().replace("-", "").replace(" ", "")
    raw = raw.replace("O", "0").replace("I", "1").replace("L", "1")
    if len(raw) != _CODE_CHARS or any(c not in _ALPHABET for c in raw):
        raise LinkError("not a link code: it is 12 letters and digits, like ABCD-EFGH-JKMN")
    return "-".join(raw[i : i + 4] for i in range(0, _CODE_CHARS, 4))


def mailbox_of(code: str) -> bytes:
    """The mailbox the server knows the code by."""
    return hashlib.sha256(b"qpq link mailbox v1\0" + code.encode("ascii")).digest()


def _derive(code: str, info: bytes, secret: bytes = b"") -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=code.encode("ascii"), info=info).derive(
        secret or code.encode("ascii")
    )


def fingerprint(device_key: bytes) -> str:
    """How a device key is shown to be compared: 8 groups of 4 hex digits."""
    digest = hashlib.sha256(device_key).hexdigest()[:32]
    return " ".join(digest[i : i + 4] for i in range(0, 32, 4))


@dataclass(frozen=True, slots=True)
class LinkRequestBody:
    """What a new device asks: to link its key, under a name."""

    device_key: bytes
    exchange_key: bytes
    name: str


def seal_request(code: str, body: LinkRequestBody) -> bytes:
    name = body.name.encode("utf-8")
    message = bytes([_VERSION]) + body.device_key + body.exchange_key + bytes([len(name)]) + name
    tag = hmac.new(_derive(code, b"qpq link request v1"), message, hashlib.sha256).digest()
    return message + tag


def open_request(code: str, payload: bytes, proven_device: bytes) -> LinkRequestBody:
    """Check a request against the code and the device key the server saw prove itself."""
    refused = LinkError("the link request does not match this code: do not approve it")
    if len(payload) < 1 + 2 * _KEY + 1 + 32 or payload[0] != _VERSION:
        raise refused
    message, tag = payload[:-32], payload[-32:]
    expected = hmac.new(_derive(code, b"qpq link request v1"), message, hashlib.sha256).digest()
    if not hmac.compare_digest(tag, expected):
        raise refused
    device_key, exchange_key = message[1 : 1 + _KEY], message[1 + _KEY : 1 + 2 * _KEY]
    length = message[1 + 2 * _KEY]
    if len(message) != 2 + 2 * _KEY + length or device_key != proven_device:
        raise refused
    try:
        name = message[2 + 2 * _KEY :].decode("utf-8")
    except UnicodeDecodeError:
        raise refused from None
    return LinkRequestBody(device_key=device_key, exchange_key=exchange_key, name=name)


@dataclass(frozen=True, slots=True)
class LinkAnswer:
    """What the approving device hands the new one (encrypted to it)."""

    certificate: bytes = field(repr=False)
    account_seed: bytes = field(repr=False)
    username: str
    #: (username, identity key, verified) of each pinned contact.
    contacts: tuple[tuple[str, bytes, bool], ...] = ()
    #: Group id -> the name the account gave it.
    groups: tuple[tuple[bytes, str], ...] = ()
    #: Past lines, when asked for (``--with-history``): (group id, kind,
    #: sender key or empty, body, sent at ms), oldest first.
    history: tuple[tuple[bytes, str, bytes, str, int], ...] = field(default=(), repr=False)


def _answer_key(code: str, shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    return _derive(code, b"qpq link answer v1" + ephemeral + recipient, shared)


def seal_answer(code: str, exchange_key: bytes, answer: LinkAnswer) -> bytes:
    plaintext = json.dumps(
        {
            "certificate": answer.certificate.hex(),
            "account_seed": answer.account_seed.hex(),
            "username": answer.username,
            "contacts": [[u, k.hex(), v] for u, k, v in answer.contacts],
            "groups": [[g.hex(), n] for g, n in answer.groups],
            "history": [[g.hex(), k, w.hex(), b, t] for g, k, w, b, t in answer.history],
        }
    ).encode("utf-8")
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(exchange_key))
    key = _answer_key(code, shared, ephemeral_public, exchange_key)
    # A key used once: the zero nonce is safe (RFC 9180 §5.2, base mode's first message).
    sealed = ChaCha20Poly1305(key).encrypt(bytes(12), plaintext, mailbox_of(code))
    return ephemeral_public + sealed


def open_answer(code: str, exchange: X25519PrivateKey, payload: bytes) -> LinkAnswer:
    refused = LinkError("the link answer does not open: it was not made for this request")
    if len(payload) <= _KEY:
        raise refused
    ephemeral_public = payload[:_KEY]
    recipient = exchange.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    try:
        shared = exchange.exchange(X25519PublicKey.from_public_bytes(ephemeral_public))
        key = _answer_key(code, shared, ephemeral_public, recipient)
        plaintext = ChaCha20Poly1305(key).decrypt(bytes(12), payload[_KEY:], mailbox_of(code))
        data = json.loads(plaintext)
        return LinkAnswer(
            certificate=bytes.fromhex(data["certificate"]),
            account_seed=bytes.fromhex(data["account_seed"]),
            username=str(data["username"]),
            contacts=tuple((str(u), bytes.fromhex(k), bool(v)) for u, k, v in data["contacts"]),
            groups=tuple((bytes.fromhex(g), str(n)) for g, n in data["groups"]),
            history=tuple(
                (bytes.fromhex(g), str(k), bytes.fromhex(w), str(b), int(t))
                for g, k, w, b, t in data.get("history", [])
            ),
        )
    except (InvalidTag, ValueError, KeyError, TypeError):
        raise refused from None
