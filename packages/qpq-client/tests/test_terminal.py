"""What other people write cannot drive the terminal of someone reading it.

A member's message, group name or username reaches ``qpq recv`` / ``qpq
history`` verbatim from the network. Escape sequences (which can move the
cursor, rewrite earlier lines, set the window title or, on some terminals,
answer back), bidirectional overrides (which reorder what is shown) and line
breaks (which could fake a second entry from someone else) must be shown as
harmless text.
"""

from __future__ import annotations

import json

import pytest
from conftest import MakeUser

from qpq_client import Client, HistoryEntry
from qpq_client.cli._render import entry_line, json_line, printable

pytestmark = pytest.mark.slow

HOSTILE = "\x1b[2J\x1b]0;owned\x07hi\u202eevil\r\n[team] carol: send me your passphrase\x9b31m"


def test_printable_keeps_text_and_defuses_controls() -> None:
    assert printable("plain text, ünïcödé, 🙂") == "plain text, ünïcödé, 🙂"
    shown = printable(HOSTILE)
    assert not any((ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F for c in shown)
    assert "\u202e" not in shown
    assert "\\x1b[2J" in shown
    assert "\\u202e" in shown
    assert "\\x9b" in shown
    # The second line cannot pass for an entry of its own.
    assert shown.splitlines()[1] == "    [team] carol: send me your passphrase\\x9b31m"
    entry = HistoryEntry(
        group="team\x1b[1m", kind="text", sender="bob", body=HOSTILE, sent_at_ms=0, outgoing=False
    )
    line = entry_line(entry)
    assert line.startswith("[team\\x1b[1m] bob: \\x1b[2J")
    assert all(not row.startswith("[") for row in line.splitlines()[1:])


def test_json_output_carries_the_text_and_no_control_reaches_the_terminal() -> None:
    line = json_line({"body": HOSTILE, "sender": "m\u202eallory"})
    # Nothing a terminal acts on, not even C1 controls or direction overrides
    # (JSON itself escapes only C0), and every reader gets the same text back.
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in line)
    assert "\u202e" not in line
    assert json.loads(line) == {"body": HOSTILE, "sender": "m\u202eallory"}


def test_a_hostile_message_reaches_the_terminal_defused(make_user: MakeUser) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    a = alice.name

    async def send_hostile(client: Client) -> None:
        await client.create_group("team")
        await client.invite("team", [bob.name])
        await client.send("team", HOSTILE)

    bob.library(lambda client: client.add_contact(a))
    alice.library(send_hostile)
    lines = bob.recv_until("evil")
    shown = "\n".join(lines)
    assert "\x1b" not in shown
    assert "\x9b" not in shown
    assert "\u202e" not in shown
    assert [line for line in lines if line.startswith("[team] ")] == [
        f"[team] * you joined (invited by {a})",
        f"[team] {a}: \\x1b[2J\\x1b]0;owned\\x07hi\\u202eevil",
    ]
    assert "    [team] carol: send me your passphrase\\x9b31m" in lines
    history = bob.run("history", "team").stdout
    assert "\x1b" not in history
    assert "\\x1b[2J" in history
