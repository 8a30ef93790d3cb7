"""How results look: lines for people, JSON for scripts."""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    # Types only: lines are drawn from the JSON form, which a call to
    # ``qpq daemon`` answers with, so that path never imports the library.
    from qpq_client import Contact, GroupSummary, HistoryEntry, KeyStatus, OutboxEntry
    from qpq_p2p import PeerInfo

__all__ = [
    "contact_json",
    "contact_line",
    "contact_text",
    "emit",
    "entry_json",
    "entry_line",
    "entry_text",
    "group_json",
    "group_line",
    "group_text",
    "json_line",
    "keys_json",
    "outbox_json",
    "outbox_line",
    "outbox_text",
    "peer_json",
    "peer_line",
    "printable",
    "safety_lines",
    "sent_entry_json",
]

#: What a member must not be able to send to a terminal: C0 and C1 controls
#: (ANSI escape sequences start with ESC or CSI, U+009B), DEL, and the Unicode
#: bidirectional overrides and isolates that reorder what is shown
#: (CVE-2021-42574). Newlines and tabs are handled on their own.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
#: Continuation lines of a multi-line message are indented, so that no line
#: of a message can pass for an entry of its own ("[group] alice: ...").
_CONTINUATION = "\n    "


def printable(text: str) -> str:
    """``text`` from someone else, safe to print on a terminal.

    Controls and direction overrides become visible escapes (``\\x1b``,
    ``\\u202e``); a line break starts an indented continuation line.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _UNSAFE.sub(lambda m: _escaped(m.group()), text)
    return text.replace("\t", "    ").replace("\n", _CONTINUATION)


def _escaped(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def entry_line(entry: HistoryEntry, *, with_time: bool = False) -> str:
    return entry_text(entry_json(entry), with_time=with_time)


def entry_text(entry: dict[str, Any], *, with_time: bool = False) -> str:
    """An entry (its JSON form) as `qpq recv` prints it."""
    stamp = ""
    if with_time:
        stamp = time.strftime("%Y-%m-%d %H:%M ", time.localtime(entry["sent_at_ms"] / 1000))
    group, body = printable(entry["group"]), printable(entry["body"])
    if entry["kind"] == "event":
        return f"{stamp}[{group}] * {body}"
    if entry["kind"] == "request":
        return f"{stamp}[{group}] * {body}: qpq group accept {group} / qpq group decline {group}"
    # A message that arrived directly while the server could not confirm its sender.
    withdrawn, unconfirmed = entry["withdrawn"], entry["unconfirmed"]
    mark = " (withdrawn)" if withdrawn else " (unconfirmed)" if unconfirmed else ""
    return f"{stamp}[{group}] {printable(entry['sender'])}{mark}: {body}"


def entry_json(entry: HistoryEntry) -> dict[str, Any]:
    return {
        "group": entry.group,
        "kind": entry.kind,
        "sender": entry.sender,
        "body": entry.body,
        "sent_at_ms": entry.sent_at_ms,
        "outgoing": entry.outgoing,
        "unconfirmed": entry.unconfirmed,
        "withdrawn": entry.withdrawn,
    }


def sent_entry_json(username: str, group: str, text: str) -> dict[str, Any]:
    """The entry of a text we just sent, as ``history`` gives it (for those who follow)."""
    return {
        "group": group,
        "kind": "text",
        "sender": username,
        "body": text,
        "sent_at_ms": int(time.time() * 1000),
        "outgoing": True,
        "unconfirmed": False,
        "withdrawn": False,
    }


def group_json(group: GroupSummary) -> dict[str, Any]:
    return {
        "name": group.name,
        "group_id": group.group_id.hex(),
        # The key scripts read since the first release; its value is the status.
        "state": str(group.status),
        "members": list(group.members),
        "epoch": group.epoch,
        "dropped": group.dropped,
        "suite": None if group.suite is None else group.suite.label,
        "inviter": group.inviter,
    }


def group_line(group: GroupSummary) -> str:
    return group_text(group_json(group))


def group_text(group: dict[str, Any]) -> str:
    """A group (its JSON form) as `qpq group list` prints it."""
    status = "" if group["state"] == "active" else f" ({group['state']})"
    # Only the post-quantum suite is named: a line without it is a default group.
    suite = f" [{group['suite']}]" if group["suite"] not in (None, "default") else ""
    if group["state"] == "requested":
        # Nobody is listed before we join; who asked us is what matters then.
        name = group["name"]
        line = printable(f"{name} (invitation from {group.get('inviter') or 'someone'}):")
        line += f" qpq group accept {printable(name)} / qpq group decline {printable(name)}"
    else:
        line = printable(f"{group['name']}{suite}{status}: {', '.join(group['members'])}")
    if group["dropped"]:
        line += (
            f" [{group['dropped']} of its messages were not kept: more than an invitation"
            " holds before you accept it]"
        )
    return line


def keys_json(status: KeyStatus) -> dict[str, Any]:
    return {
        "available": status.available,
        "has_last_resort": status.has_last_resort,
        "uploaded": status.uploaded,
        "last_resort_served": status.last_resort_served,
        "suites": [
            {
                "suite": s.suite.label,
                "available": s.available,
                "has_last_resort": s.has_last_resort,
                "uploaded": s.uploaded,
                "last_resort_served": s.last_resort_served,
            }
            for s in status.suites
        ],
    }


def outbox_json(entry: OutboxEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "group": entry.group,
        "kind": entry.kind,
        "created_at_ms": entry.created_at_ms,
        "size": entry.size,
    }


def outbox_line(entry: OutboxEntry) -> str:
    return outbox_text(outbox_json(entry))


def outbox_text(entry: dict[str, Any]) -> str:
    """An outbox entry (its JSON form) as `qpq outbox` prints it."""
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry["created_at_ms"] / 1000))
    what = f"{entry['kind']} to {printable(entry['group'])}"
    return f"{entry['id']}  {stamp}  {what} ({entry['size']:,} bytes)"


def contact_json(contact: Contact) -> dict[str, Any]:
    return {
        "username": contact.username,
        "identity_key": contact.identity_key.hex(),
        "verified": contact.verified,
        "key_changed": contact.key_changed,
        "new_key": contact.new_key.hex() if contact.new_key else None,
        "contact": contact.contact,
        "blocked": contact.blocked,
    }


def contact_line(contact: Contact) -> str:
    return contact_text(contact_json(contact))


def contact_text(contact: dict[str, Any]) -> str:
    """A contact (its JSON form) as `qpq contacts` prints it."""
    parts = [
        printable(contact["username"]),
        f"key {contact['identity_key'][:16]}…",
        "verified" if contact["verified"] else "not verified",
    ]
    if contact["key_changed"] and contact["new_key"] is not None:
        parts.append(
            f"KEY CHANGED to {contact['new_key'][:16]}… (check with them, then"
            f" `qpq contacts accept {contact['username']}`)"
        )
    if contact["blocked"]:
        parts.append("blocked")
    return "  ".join(parts)


def safety_lines(username: str, number: str) -> list[str]:
    """The 60 digits in three rows of four groups, as people read them aloud."""
    groups = [number[i : i + 5] for i in range(0, len(number), 5)]
    rows = [" ".join(groups[i : i + 4]) for i in range(0, len(groups), 4)]
    return [f"safety number with {username} (compare it with theirs, in person or on a call):"] + [
        f"    {row}" for row in rows
    ]


def json_line(data: Any) -> str:
    """``data`` as one line of JSON that is safe on a terminal too.

    JSON escapes only C0 controls; what :data:`_UNSAFE` names beyond them
    (DEL, C1 controls such as CSI, direction overrides) is written as a
    ``\\u`` escape (``\\u009b`` for CSI), which every JSON reader reads back as the same text.
    """
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(data, ensure_ascii=False))


def emit(as_json: bool, data: Any, text: str | None) -> None:
    """Print ``data`` as one JSON line, or ``text`` for a person."""
    if as_json:
        click.echo(json_line(data))
    elif text is not None:
        click.echo(text)


def peer_json(peer: PeerInfo, name: str) -> dict[str, Any]:
    return {
        "username": name,
        "identity_key": peer.identity_key.hex(),
        "addresses": [{"source": a.source, "address": str(a)} for a in peer.addresses],
        "reachable": peer.reachable,
        "connected": peer.connected,
        "last_error": peer.last_error,
    }


def peer_line(peer: dict[str, Any]) -> str:
    state = {True: "reachable", False: "unreachable", None: "not tried"}[peer["reachable"]]
    found = ", ".join(f"{a['address']} ({a['source']})" for a in peer["addresses"]) or "no address"
    error = f": {peer['last_error']}" if peer["reachable"] is False and peer["last_error"] else ""
    return f"{printable(peer['username'])}: {state}{printable(error)}; {found}"
