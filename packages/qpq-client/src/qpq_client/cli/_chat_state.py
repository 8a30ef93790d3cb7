"""What `qpq chat` shows, without a terminal: groups, timelines, unread counts, the status line.

The screen (:mod:`qpq_client.cli._chat`) draws this model and feeds it what
the backend hands over; tests read the same lines the screen shows.
Everything a member chose (group names, usernames, message text) passes
through :func:`~qpq_client.cli._render.printable`, as in the rest of the CLI.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from qpq_client.cli._render import printable

__all__ = ["ChatState", "GroupView", "TimelineLine", "timestamp"]

#: Lines a timeline keeps (older ones remain in `qpq history`).
MAX_TIMELINE = 2000


def timestamp(sent_at_ms: int, *, now: float | None = None) -> str:
    """``HH:MM`` for today, ``YYYY-MM-DD HH:MM`` for an older day (local time)."""
    when = time.localtime(sent_at_ms / 1000)
    today = time.localtime(time.time() if now is None else now)
    if (when.tm_year, when.tm_yday) == (today.tm_year, today.tm_yday):
        return time.strftime("%H:%M", when)
    return time.strftime("%Y-%m-%d %H:%M", when)


@dataclass(frozen=True)
class TimelineLine:
    """One line of a timeline as shown: its style class and its (escaped) text."""

    style: str
    text: str


def _line(entry: dict[str, Any], *, waiting: bool = False) -> TimelineLine:
    stamp = timestamp(int(entry["sent_at_ms"]))
    body = printable(entry["body"])
    if entry["kind"] == "notice":
        return TimelineLine("class:notice", f"{stamp} -- {body}")
    if entry["kind"] == "event":
        return TimelineLine("class:event", f"{stamp} * {body}")
    if entry["kind"] == "request":
        # The way to answer, while the invitation waits for it.
        hint = " (/accept or /decline)" if waiting else ""
        return TimelineLine("class:request", f"{stamp} * {body}{hint}")
    mark = (
        " (withdrawn)" if entry["withdrawn"] else " (unconfirmed)" if entry["unconfirmed"] else ""
    )
    style = "class:own" if entry["outgoing"] else "class:message"
    return TimelineLine(style, f"{stamp} {printable(entry['sender'])}{mark}: {body}")


def _key(entry: dict[str, Any]) -> tuple[Any, ...]:
    return (entry["kind"], entry["sender"], entry["body"], entry["sent_at_ms"])


@dataclass
class GroupView:
    """One group in the list: its state, its timeline, what is unread."""

    name: str
    state: str
    members: list[str] = field(default_factory=list)
    lines: list[TimelineLine] = field(default_factory=list)
    unread: int = 0
    #: Entries of the loaded history: the same entry handed over again by
    #: the subscription (it was not shown yet when the chat started) is
    #: counted unread, not drawn twice.
    loaded: set[tuple[Any, ...]] = field(default_factory=set)

    @property
    def is_request(self) -> bool:
        return self.state == "requested"


class ChatState:
    """The groups and their timelines, the selection and the status line."""

    def __init__(self, username: str = "") -> None:
        self.username = username
        self.groups: dict[str, GroupView] = {}
        self.selected: str | None = None
        self.status = ""
        self.connected: bool | None = None
        #: Lines of the timeline left out at its end (PageUp); 0: the newest show.
        self.scrolled = 0

    # ---- groups ---------------------------------------------------------------

    def set_groups(self, groups: list[dict[str, Any]]) -> list[str]:
        """Take the list ``listGroups`` answered; the names that are new (their history is due)."""
        new = []
        listed = {}
        for data in groups:
            if data["state"] in ("left", "removed") and data["name"] not in self.groups:
                continue  # an old entry of a group: `qpq history` has it
            view = self.groups.get(data["name"]) or GroupView(data["name"], data["state"])
            if data["name"] not in self.groups:
                new.append(data["name"])
            view.state = data["state"]
            view.members = list(data["members"])
            listed[data["name"]] = view
        self.groups = listed
        if self.selected not in self.groups:
            self.selected = next(iter(self.groups), None)
        return new

    def load_history(self, group: str, entries: list[dict[str, Any]]) -> None:
        view = self.groups.get(group)
        if view is None:
            return
        view.lines = [_line(e, waiting=view.is_request) for e in entries[-MAX_TIMELINE:]]
        view.loaded = {_key(e) for e in entries}

    def select(self, group: str) -> None:
        self.selected = group
        self.groups[group].unread = 0
        self.scrolled = 0

    def scroll(self, lines: int) -> None:
        """Scroll the timeline back (``lines`` > 0) or forward, never past either end."""
        view = self.current()
        most = 0 if view is None else max(len(view.lines) - 1, 0)
        self.scrolled = min(max(0, self.scrolled + lines), most)

    def step(self, by: int) -> None:
        """Select the group ``by`` places further down the list (wrapping)."""
        names = list(self.groups)
        if not names:
            return
        at = names.index(self.selected) if self.selected in names else 0
        self.select(names[(at + by) % len(names)])

    def current(self) -> GroupView | None:
        return None if self.selected is None else self.groups.get(self.selected)

    # ---- what arrives -----------------------------------------------------------

    def add_entry(self, entry: dict[str, Any]) -> bool:
        """Show an entry; False when its group is not listed yet (the list is due)."""
        view = self.groups.get(entry["group"])
        if view is None:
            return False
        key = _key(entry)
        if key in view.loaded:
            view.loaded.discard(key)
        else:
            view.lines.append(_line(entry, waiting=view.is_request))
            del view.lines[:-MAX_TIMELINE]
        if entry["group"] != self.selected and not entry["outgoing"]:
            view.unread += 1
        return True

    def notice(self, text: str) -> None:
        """A line of ours in the current timeline (members, a safety number): not stored."""
        view = self.current()
        if view is None:
            self.status = text
            return
        view.lines.append(
            _line({"kind": "notice", "body": text, "sent_at_ms": int(time.time() * 1000)})
        )

    def error(self, message: str) -> None:
        """One line in the status bar (the first line of ``message``, escaped)."""
        first = message.strip().splitlines()[0] if message.strip() else "failed"
        self.status = f"error: {printable(first)}"

    # ---- what is drawn --------------------------------------------------------------

    def group_lines(self) -> list[TimelineLine]:
        lines = []
        for name, view in self.groups.items():
            mark = ">" if name == self.selected else " "
            if view.is_request:
                suffix = " (inv)"  # an invitation: /accept or /decline
            elif view.state != "active":
                suffix = f" ({view.state})"
            else:
                suffix = ""
            unread = f" [{view.unread}]" if view.unread else ""
            style = "class:selected" if name == self.selected else "class:group"
            if view.is_request and name != self.selected:
                style = "class:request"
            lines.append(TimelineLine(style, f"{mark}{printable(name)}{suffix}{unread}"))
        if not lines:
            lines.append(TimelineLine("class:group", " (no groups: /create NAME)"))
        return lines

    def timeline_lines(self) -> list[TimelineLine]:
        """The selected timeline as drawn: up to where it is scrolled back to."""
        view = self.current()
        if view is None:
            return []
        return view.lines[: len(view.lines) - self.scrolled] if self.scrolled else list(view.lines)

    def title(self) -> str:
        view = self.current()
        if view is None:
            return "qpq chat"
        members = ", ".join(view.members)
        back = f" (scrolled back {self.scrolled} lines: PageDown)" if self.scrolled else ""
        return printable(f"{view.name}: {members}" if members else view.name) + back

    def status_line(self) -> str:
        link = {True: "connected", False: "not connected", None: "connecting"}[self.connected]
        who = printable(self.username)
        return f"{who} | {link} | {self.status}" if self.status else f"{who} | {link} | /help"
