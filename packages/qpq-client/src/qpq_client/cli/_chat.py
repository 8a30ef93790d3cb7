"""`qpq chat`: the terminal client, drawn with prompt_toolkit.

Groups on the left (unread counts, invitations waiting), the selected
group's timeline on the right, a status bar and an input line below.
What it shows is :class:`~qpq_client.cli._chat_state.ChatState`; where the
data comes from is a :mod:`~qpq_client.cli._chat_backend` (the profile's
daemon when one runs, else the profile opened in this process). Why
prompt_toolkit and not Textual: docs/daemon.md, "qpq chat".
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prompt_toolkit.application import Application
from prompt_toolkit.data_structures import Point
from prompt_toolkit.filters import Condition
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.layout import HSplit, Layout, VSplit, Window
from prompt_toolkit.layout.controls import FormattedTextControl
from prompt_toolkit.layout.dimension import Dimension
from prompt_toolkit.output import Output
from prompt_toolkit.styles import Style
from prompt_toolkit.widgets import TextArea

from qpq_client.cli._chat_backend import Backend, CallFailedError, DaemonBackend, LocalBackend
from qpq_client.cli._chat_commands import QuitChat, refresh_groups, run_input
from qpq_client.cli._chat_state import ChatState, TimelineLine
from qpq_client.cli._errors import fail
from qpq_client.cli._render import printable
from qpq_client.cli._via_daemon import daemon_link

if TYPE_CHECKING:
    from qpq_client.cli._main import Options

__all__ = ["ChatScreen", "open_backend", "run_chat"]

#: Lines PageUp and PageDown move the timeline by.
_PAGE_ROWS = 10

_STYLE = Style.from_dict(
    {
        "title": "bold",
        "status": "reverse",
        "selected": "bold reverse",
        "own": "ansigreen",
        "event": "ansiyellow",
        "request": "ansimagenta bold",
        "notice": "ansicyan",
        "separator": "ansibrightblack",
    }
)


def _fragments(lines: list[TimelineLine]) -> StyleAndTextTuples:
    fragments: StyleAndTextTuples = []
    for i, line in enumerate(lines):
        if i:
            fragments.append(("", "\n"))
        fragments.append((line.style, line.text))
    return fragments


class ChatScreen:
    """The chat's screen over a backend: run it with :meth:`run`.

    Args:
        backend: where calls go and events come from.
        input: the terminal's input (tests pass a pipe); None: this terminal.
        output: the terminal's output (tests pass ``DummyOutput``); None: this terminal.
    """

    def __init__(
        self, backend: Backend, *, input: Input | None = None, output: Output | None = None
    ) -> None:
        self.backend = backend
        self.state = ChatState()
        self._changed = asyncio.Event()
        self._submitted: asyncio.Queue[str] = asyncio.Queue()
        self.input = TextArea(
            multiline=True, prompt="> ", height=self._input_height, wrap_lines=True
        )
        groups = Window(
            FormattedTextControl(lambda: _fragments(self.state.group_lines())),
            width=Dimension.exact(24),
        )
        timeline = Window(
            FormattedTextControl(
                lambda: _fragments(self.state.timeline_lines()),
                get_cursor_position=self._timeline_end,
            ),
            wrap_lines=True,
        )
        title = Window(
            FormattedTextControl(lambda: [("class:title", self.state.title())]), height=1
        )
        status = Window(
            FormattedTextControl(lambda: [("class:status", self.state.status_line())]),
            height=1,
            style="class:status",
        )
        root = HSplit(
            [
                VSplit(
                    [
                        groups,
                        Window(width=1, char="\u2502", style="class:separator"),
                        HSplit([title, timeline]),
                    ]
                ),
                status,
                self.input,
            ]
        )
        self.app: Application[None] = Application(
            layout=Layout(root, focused_element=self.input),
            key_bindings=self._bindings(),
            style=_STYLE,
            full_screen=True,
            input=input,
            output=output,
        )

    def _input_height(self) -> Dimension:
        # As high as what was typed or pasted, up to six lines; the rest is timeline.
        return Dimension.exact(min(6, max(1, self.input.document.line_count)))

    def _timeline_end(self) -> Point:
        # The window keeps the cursor in view: on the last line drawn, the
        # newest lines drawn show (PageUp leaves the newest out: ChatState.scroll).
        lines = self.state.timeline_lines()
        rows = sum(line.text.count("\n") + 1 for line in lines)
        return Point(x=0, y=max(rows - 1, 0))

    def _bindings(self) -> KeyBindings:
        bindings = KeyBindings()

        @bindings.add("enter")
        def _submit(event: KeyPressEvent) -> None:
            text = self.input.text
            self.input.buffer.reset(append_to_history=True)
            self._submitted.put_nowait(text)

        @bindings.add("escape", "enter")
        def _newline(event: KeyPressEvent) -> None:
            self.input.buffer.newline(copy_margin=False)

        @bindings.add("c-n")
        def _next(event: KeyPressEvent) -> None:
            self._update(lambda: self.state.step(1))

        @bindings.add("c-p")
        def _previous(event: KeyPressEvent) -> None:
            self._update(lambda: self.state.step(-1))

        @bindings.add("pageup")
        def _back(event: KeyPressEvent) -> None:
            self._update(lambda: self.state.scroll(_PAGE_ROWS))

        @bindings.add("pagedown")
        def _forward(event: KeyPressEvent) -> None:
            self._update(lambda: self.state.scroll(-_PAGE_ROWS))

        @bindings.add("c-c")
        @bindings.add("c-d", filter=Condition(self._input_empty))
        def _quit(event: KeyPressEvent) -> None:
            event.app.exit()

        return bindings

    def _input_empty(self) -> bool:
        return not self.input.text

    def _update(self, change: Callable[[], Any] | None = None) -> None:
        if change is not None:
            change()
        self._changed.set()
        self.app.invalidate()

    async def wait_until(self, shown: Callable[[ChatState], bool]) -> None:
        """Wait until ``shown(state)`` holds (for tests: bound it with ``asyncio.timeout``)."""
        while not shown(self.state):
            self._changed.clear()
            await self._changed.wait()

    async def run(self) -> None:
        """Load the groups, then draw and serve until /quit, Ctrl+C or Ctrl+D."""
        try:
            self.state.username = (await self.backend.call("whoami"))["username"]
            await refresh_groups(self.backend, self.state)
        except CallFailedError as error:
            self.state.error(str(error))
        if isinstance(self.backend, LocalBackend):
            self.backend.start()  # after the history: what follow hands over is newer
        tasks = [asyncio.ensure_future(self._pump()), asyncio.ensure_future(self._work())]
        self._update()
        try:
            await self.app.run_async()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _work(self) -> None:
        # One submission at a time, in the order typed: messages go out in order.
        while True:
            text = await self._submitted.get()
            # What was typed before the first connection settled waits for it,
            # rather than failing as "not connected".
            await self.wait_until(lambda state: state.connected is not None)
            try:
                await run_input(self.backend, self.state, text)
            except QuitChat:
                self.app.exit()
                return
            except Exception as error:  # noqa: BLE001 - the screen stays up; the bar says it
                self.state.error(f"unexpected {type(error).__name__}: {error}")
            self._update()

    async def _pump(self) -> None:
        while True:
            kind, params = await self.backend.next_event()
            try:
                await self._apply(kind, params)
            except CallFailedError as error:
                self.state.error(str(error))
            except Exception as error:  # noqa: BLE001 - the screen stays up; the bar says it
                self.state.error(f"unexpected {type(error).__name__}: {error}")
            self._update()

    async def _apply(self, kind: str, params: dict[str, Any]) -> None:
        state = self.state
        if kind == "entry":
            # A join, a rename, an invitation: the group list changes with it.
            if params["kind"] != "text" or params["group"] not in state.groups:
                await refresh_groups(self.backend, state)
            state.add_entry(params)
        elif kind == "connection":
            state.connected = bool(params.get("connected"))
            if not state.connected and params.get("reason"):
                state.error(f"not connected: {params['reason']}")
        elif kind == "keyChanged":
            name = printable(str(params.get("username")))
            state.status = (
                f"{name}'s key changed: sending to them waits until you check it"
                f" (/safety {name}, then qpq contacts accept {name})"
            )
        elif kind == "ended":
            state.connected = False
            state.error(str(params.get("reason")))


async def open_backend(opts: Options, passphrase: str | None) -> Backend:
    """The daemon's backend when ``passphrase`` is None, else the profile opened here."""
    if passphrase is None:
        daemon = await DaemonBackend.open(opts.home)
        if daemon is None:
            fail(f"the daemon of {opts.home} stopped just now (qpq daemon status)")
        return daemon
    return LocalBackend.open(opts.home, passphrase, opts.connection())


def run_chat(opts: Options) -> None:
    """`qpq chat`: through the daemon when one runs for the profile, else in this process."""
    from qpq_client.cli._local import run  # noqa: PLC0415 - maps any failure to one line

    link = daemon_link(opts.home)
    passphrase = None
    if link is None:
        passphrase = opts.passphrase()
    else:
        link.close()

    async def work() -> None:
        backend = await open_backend(opts, passphrase)
        try:
            await ChatScreen(backend).run()
        finally:
            await backend.close()

    run(work)
