"""How results look: lines for people, JSON for scripts."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from qpq_client import GroupInfo, HistoryEntry, KeyStatus

__all__ = ["emit", "entry_json", "entry_line", "group_json", "keys_json"]


def entry_line(entry: HistoryEntry, *, with_time: bool = False) -> str:
    stamp = ""
    if with_time:
        stamp = time.strftime("%Y-%m-%d %H:%M ", time.localtime(entry.sent_at_ms / 1000))
    if entry.kind == "event":
        return f"{stamp}[{entry.group}] * {entry.body}"
    return f"{stamp}[{entry.group}] {entry.sender}: {entry.body}"


def entry_json(entry: HistoryEntry) -> dict[str, Any]:
    return {
        "group": entry.group,
        "kind": entry.kind,
        "sender": entry.sender,
        "body": entry.body,
        "sent_at_ms": entry.sent_at_ms,
        "outgoing": entry.outgoing,
    }


def group_json(group: GroupInfo) -> dict[str, Any]:
    return {
        "name": group.name,
        "group_id": group.group_id.hex(),
        "state": group.state,
        "members": list(group.members),
        "epoch": group.epoch,
    }


def keys_json(status: KeyStatus) -> dict[str, Any]:
    return {
        "available": status.available,
        "has_last_resort": status.has_last_resort,
        "uploaded": status.uploaded,
    }


def emit(as_json: bool, data: Any, text: str | None) -> None:
    """Print ``data`` as one JSON line, or ``text`` for a person."""
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False))
    elif text is not None:
        click.echo(text)
