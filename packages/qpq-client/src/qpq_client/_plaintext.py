"""What travels inside an MLS application message: a small typed JSON object.

``{"v": 1, "type": "text", "body": ..., "sent_at": ms, "id": ...}`` is a chat
message (``id``: random, chosen by its sender, so that a text that reached
us twice — sent directly and again through the server after a failure, in
two encryptions — is shown once);
``{"v": 1, "type": "meta", "name": ...}`` tells a member who just joined the
name the inviter uses for the group; ``{"v": 1, "type": "declined"}`` is
sent by a member who declined the invitation, just before its leave, so
that the others read "bob declined the invitation", not "bob left".
Anything else is kept as "unsupported" rather than guessed at, so newer
clients can add types.

Any member can send any bytes here, so :func:`decode` never raises and
bounds what it reads: at most the server's payload limit, nesting at most
:data:`MAX_DEPTH` deep (checked before parsing, since the parser recurses),
no NaN or infinities, strings that are valid Unicode, and a ``sent_at``
outside ``[0, 2**63-1]`` (what SQLite stores) counts as missing.

Every step takes time linear in the plaintext's length, whatever it holds:
a message that took quadratic time (a megabyte of escaped quotes made the
old nesting check run for hours) would stall every receive that reaches it,
a lock-out as sure as a crash.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from qpq_proto import DEFAULT_LIMITS

__all__ = [
    "Declined",
    "GroupMeta",
    "Text",
    "Unsupported",
    "decode",
    "encode_declined",
    "encode_meta",
    "encode_text",
]

VERSION = 1
MAX_NAME_CHARS = 100
#: A plaintext above this is not read. It is the server's payload limit: a
#: plaintext travels inside a payload, so whatever a sender may send reads
#: (a receiver passes the limit its server announced, see :func:`decode`).
MAX_PLAINTEXT_BYTES = DEFAULT_LIMITS.max_payload_bytes
#: Deepest nesting of arrays and objects read; ours are one level deep.
MAX_DEPTH = 32
_MAX_SENT_AT = 2**63 - 1
#: A text's id longer than this is ignored (ours are 32 hex digits).
MAX_ID_CHARS = 64
#: A JSON string, escapes included, or an unterminated one up to the end of
#: the text. Possessive (``++``, ``*+``): a string that is never closed is
#: consumed once, instead of being tried again from every quote inside it,
#: which made the plain pattern quadratic on ``"\"\"\"...`` (a quote, then
#: escaped quotes, never closed).
_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


@dataclass(frozen=True, slots=True)
class Text:
    body: str
    sent_at: int
    #: The sender's id for this text (None from a client that sends none).
    message_id: str | None = None


@dataclass(frozen=True, slots=True)
class GroupMeta:
    name: str


@dataclass(frozen=True, slots=True)
class Declined:
    """Its sender declined the invitation to the group (its leave follows)."""


@dataclass(frozen=True, slots=True)
class Unsupported:
    reason: str


def encode_text(body: str, sent_at: int, message_id: str | None = None) -> bytes:
    fields: dict[str, object] = {"v": VERSION, "type": "text", "body": body, "sent_at": sent_at}
    if message_id is not None:
        fields["id"] = message_id
    return json.dumps(fields).encode()


def encode_declined() -> bytes:
    return json.dumps({"v": VERSION, "type": "declined"}).encode()


def encode_meta(name: str) -> bytes:
    return json.dumps({"v": VERSION, "type": "meta", "name": name}).encode()


def decode(
    plaintext: bytes, *, max_bytes: int = MAX_PLAINTEXT_BYTES
) -> Text | GroupMeta | Declined | Unsupported:
    """Read a plaintext; whatever it holds, the answer is one of the four (never an error).

    ``max_bytes``: the largest plaintext read (the server's payload limit).
    """
    if len(plaintext) > max_bytes:
        return Unsupported("too large")
    try:
        text = plaintext.decode("utf-8")
        if _depth(text) > MAX_DEPTH:
            return Unsupported("nested too deep")
        value = json.loads(text, parse_constant=_refuse_constant)
        return _typed(value)
    except (UnicodeError, ValueError, RecursionError):
        return Unsupported("not a qpq message")


def _depth(text: str) -> int:
    """How deep arrays and objects nest in JSON ``text`` (brackets inside strings do not count)."""
    depth = deepest = 0
    for bracket in _BRACKET.finditer(_STRING.sub("", text)):
        depth += 1 if bracket.group() in "[{" else -1
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            break
    return deepest


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def _valid_text(value: object) -> bool:
    # JSON escapes can spell lone surrogates, which no UTF-8 store or terminal takes.
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _typed(value: object) -> Text | GroupMeta | Declined | Unsupported:
    if not isinstance(value, dict):
        return Unsupported("not a qpq message")
    version = value.get("v")
    if type(version) is not int or version != VERSION:
        return Unsupported("unknown message version")
    kind = value.get("type")
    if kind == "text":
        if not _valid_text(value.get("body")):
            return Unsupported("a text without valid text")
        sent_at = value.get("sent_at")
        if type(sent_at) is not int or not 0 <= sent_at <= _MAX_SENT_AT:
            sent_at = 0  # missing, or out of what a timestamp can be
        message_id = value.get("id")
        if type(message_id) is not str or not 0 < len(message_id) <= MAX_ID_CHARS:
            message_id = None
        return Text(value["body"], sent_at, message_id)
    if kind == "meta":
        if not _valid_text(value.get("name")):
            return Unsupported("a group name without valid text")
        name = " ".join(value["name"].split())[:MAX_NAME_CHARS]
        return GroupMeta(name) if name else Unsupported("empty group name")
    if kind == "declined":
        return Declined()
    if not _valid_text(kind):
        return Unsupported("unknown message type")
    return Unsupported(f"unknown message type {str(kind)[:40]!r}")
