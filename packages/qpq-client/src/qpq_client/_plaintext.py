"""What travels inside an MLS application message: a small typed JSON object.

``{"v": 1, "type": "text", "body": ..., "sent_at": ms}`` is a chat message;
``{"v": 1, "type": "meta", "name": ...}`` tells a member who just joined the
name the inviter uses for the group. Anything else is kept as "unsupported"
rather than guessed at, so newer clients can add types.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = ["GroupMeta", "Text", "Unsupported", "decode", "encode_meta", "encode_text"]

VERSION = 1
MAX_NAME_CHARS = 100


@dataclass(frozen=True, slots=True)
class Text:
    body: str
    sent_at: int


@dataclass(frozen=True, slots=True)
class GroupMeta:
    name: str


@dataclass(frozen=True, slots=True)
class Unsupported:
    reason: str


def encode_text(body: str, sent_at: int) -> bytes:
    return json.dumps({"v": VERSION, "type": "text", "body": body, "sent_at": sent_at}).encode()


def encode_meta(name: str) -> bytes:
    return json.dumps({"v": VERSION, "type": "meta", "name": name}).encode()


def decode(plaintext: bytes) -> Text | GroupMeta | Unsupported:
    try:
        value = json.loads(plaintext.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return Unsupported("not a qpq message")
    if not isinstance(value, dict) or value.get("v") != VERSION:
        return Unsupported("unknown message version")
    kind = value.get("type")
    if kind == "text" and isinstance(value.get("body"), str):
        sent_at = value.get("sent_at")
        return Text(value["body"], sent_at if isinstance(sent_at, int) and sent_at >= 0 else 0)
    if kind == "meta" and isinstance(value.get("name"), str):
        name = " ".join(value["name"].split())[:MAX_NAME_CHARS]
        return GroupMeta(name) if name else Unsupported("empty group name")
    return Unsupported(f"unknown message type {kind!r}")
