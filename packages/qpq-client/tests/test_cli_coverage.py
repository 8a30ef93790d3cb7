"""Every `qpq` command runs somewhere in this suite.

The flows are tested through the library; the command is a thin shell over
it, proved by a few smoke tests. This reads the click command tree and the
`qpq` invocations written in the test modules (``user.run("group", "create",
...)``, ``[*qpq_command(), "recv", "--follow"]``), so that a command added
without a smoke test, or a smoke test removed, fails here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Sequence
from pathlib import Path

import click

from qpq_client.cli import cli

TESTS = Path(__file__).parent
Command = tuple[str, ...]


def command_tree(group: click.Group, path: Command = ()) -> set[Command]:
    """Every runnable command: leaves, and groups that do something on their own."""
    found: set[Command] = set()
    for name, command in group.commands.items():
        here = (*path, name)
        if isinstance(command, click.Group):
            if command.invoke_without_command:
                found.add(here)
            found |= command_tree(command, here)
        else:
            found.add(here)
    return found


def _takes_value(group: click.Command, option: str) -> bool:
    return any(
        isinstance(p, click.Option) and option in p.opts and not p.is_flag for p in group.params
    )


def command_of(argv: Sequence[str]) -> Command | None:
    """The command an argument list runs (global options skipped), if it names one."""
    command: click.Command = cli
    path: list[str] = []
    tokens = iter(argv)
    for token in tokens:
        if token.startswith("-"):
            if "=" not in token and _takes_value(command, token):
                next(tokens, None)
            continue
        if not isinstance(command, click.Group) or token not in command.commands:
            break
        command = command.commands[token]
        path.append(token)
    if not path or (isinstance(command, click.Group) and not command.invoke_without_command):
        return None
    return tuple(path)


def _leading_strings(args: Sequence[ast.expr]) -> list[str]:
    strings: list[str] = []
    for arg in args:
        if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
            break
        strings.append(arg.value)
    return strings


def _is_qpq_command(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Starred)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Name)
        and node.value.func.id == "qpq_command"
    )


def invocations(source: str) -> Iterator[list[str]]:
    """Argument lists of `qpq` in a test module: ``x.run("a", ...)``, and
    ``*qpq_command(), "a", ...`` in a call or a list."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Attribute) and node.func.attr == "run":
                yield _leading_strings(node.args)
            if node.args and _is_qpq_command(node.args[0]):
                yield _leading_strings(node.args[1:])
        elif isinstance(node, ast.List) and node.elts and _is_qpq_command(node.elts[0]):
            yield _leading_strings(node.elts[1:])


def commands_run() -> set[Command]:
    found: set[Command] = set()
    for module in sorted(TESTS.glob("test_*.py")):
        for argv in invocations(module.read_text(encoding="utf-8")):
            command = command_of(argv)
            if command is not None:
                found.add(command)
    return found


def test_every_command_runs_in_a_smoke_test() -> None:
    assert command_tree(cli) - commands_run() == set()


def test_the_reader_finds_what_a_test_runs() -> None:
    source = """
user.run("--json", "--connect-timeout", "1", "group", "invite", "g", name)
user.run("contacts")
subprocess.Popen([*qpq_command(), "recv", "--follow"])
subprocess.run(["ls", "-l"])
user.run(*args)
"""
    found = [command_of(argv) for argv in invocations(source)]
    assert sorted(c for c in found if c is not None) == [
        ("contacts",),
        ("group", "invite"),
        ("recv",),
    ]
    assert found.count(None) == 2  # not `qpq`; arguments the reader cannot see
    assert command_of(["group"]) is None  # a group without a subcommand does nothing
    assert ("keys", "refresh") in command_tree(cli)
