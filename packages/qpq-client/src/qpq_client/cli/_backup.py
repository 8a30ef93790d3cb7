"""``qpq backup export|import``: a profile in one passphrase-sealed file, and back.

A thin shell over :func:`qpq_client.export_backup` and
:func:`qpq_client.import_backup` (docs/backup.md). The backup passphrase is
read from ``--passphrase-file`` or asked at a prompt (twice when
exporting); it is never an argument, where the process list would show it.
Both run in this process, whether or not a ``qpq daemon`` runs: an export
only reads the state, and an import makes a new profile.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from qpq_client.cli._errors import fail
from qpq_client.cli._render import emit, printable

if TYPE_CHECKING:
    from qpq_client.cli._main import Options

__all__ = ["backup"]


def _backup_passphrase(path: Path | None, *, confirm: bool) -> str:
    if path is not None:
        try:
            text = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as error:
            fail(f"cannot read the passphrase file {path}: {type(error).__name__}")
        # Trailing newlines from `echo phrase > file` are not part of it.
        passphrase = text.rstrip("\r\n")
    else:
        passphrase = click.prompt(
            "Backup passphrase", hide_input=True, confirmation_prompt=confirm, err=True
        )
    if not passphrase:
        fail("the backup passphrase must not be empty")
    return passphrase


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _strong_enough(passphrase: str, username: str, *, weak_ok: bool) -> str:
    from qpq_client.cli._passphrase import passphrase_weakness  # noqa: PLC0415

    weakness = None if weak_ok else passphrase_weakness(passphrase, username)
    if weakness is not None:
        fail(weakness)
    return passphrase


_WEAK_OK = click.option(
    "--weak-passphrase-ok",
    is_flag=True,
    help="Accept a passphrase that is quickly guessed (whoever copies the file can try).",
)

_PASSPHRASE_FILE = click.option(
    "--passphrase-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Read the backup passphrase from this file (else it is asked at a prompt).",
)


@click.group()
def backup() -> None:
    """Export this profile to one encrypted file, or restore one on a new machine."""


@backup.command("export")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@_PASSPHRASE_FILE
@_WEAK_OK
@click.pass_obj
def backup_export(
    opts: Options, file: Path, passphrase_file: Path | None, weak_passphrase_ok: bool
) -> None:
    """Write the profile (identity, contacts, pinned keys, groups, history) to FILE.

    FILE is sealed under a backup passphrase (scrypt, ChaCha20-Poly1305) and
    replaced atomically, readable by you alone. It holds no group epoch
    secrets: a restored profile rejoins its groups.
    """
    from qpq_client import export_backup  # noqa: PLC0415 - off the daemon path
    from qpq_client.cli._local import run  # noqa: PLC0415

    state_passphrase = opts.passphrase()
    # The file is the profile outside its home: anyone who copies it can
    # guess offline, so its passphrase is held to init's standard.
    passphrase = _strong_enough(
        _backup_passphrase(passphrase_file, confirm=True), "", weak_ok=weak_passphrase_ok
    )

    async def work() -> dict[str, Any]:
        summary = export_backup(opts.home, state_passphrase, file, passphrase)
        return {
            "file": str(file),
            "username": summary.username,
            "groups": list(summary.groups),
            "history_lines": summary.history_lines,
            "contacts": summary.contacts,
        }

    data = run(work)
    groups = ", ".join(printable(name) for name in data["groups"]) or "none"
    emit(
        opts.as_json,
        data,
        f"backed up {printable(data['username'])} to {file}: groups {groups}; "
        f"{_count(data['history_lines'], 'line')} of history, "
        f"{_count(data['contacts'], 'contact')}",
    )


@backup.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@_PASSPHRASE_FILE
@_WEAK_OK
@click.option(
    "--device-name",
    help="The name of the new device the restored profile is [default: restored].",
)
@click.pass_obj
def backup_import(
    opts: Options,
    file: Path,
    passphrase_file: Path | None,
    weak_passphrase_ok: bool,
    device_name: str | None,
) -> None:
    """Restore the backup FILE into a new profile (--home) and rejoin its groups.

    The restored profile is a new device of the account (the lost one can
    then be removed with `qpq device remove`). The new profile gets a state
    passphrase of its own, as `qpq init` does. --server, --pin, --ca-cert
    and --token override what the backup stored.
    """
    from qpq_client import import_backup  # noqa: PLC0415 - off the daemon path
    from qpq_client.cli._local import run  # noqa: PLC0415

    passphrase = _backup_passphrase(passphrase_file, confirm=False)

    async def work() -> dict[str, Any]:
        restored = await import_backup(
            file,
            passphrase,
            opts.home,
            # Asked once the file has opened: a wrong backup passphrase is told first.
            # The new profile's passphrase is held to init's standard.
            lambda: _strong_enough(opts.passphrase(confirm=True), "", weak_ok=weak_passphrase_ok),
            server=opts.address(),
            trust=opts.trust(),
            token=opts.token,
            device_name=device_name,
            connect_timeout=opts.connect_timeout,
        )
        summary = restored.summary
        made = datetime.datetime.fromtimestamp(summary.created_at_ms / 1000, datetime.UTC)
        return {
            "username": summary.username,
            "device": restored.device_name,
            "home": str(opts.home),
            "exported_at": f"{made:%Y-%m-%d %H:%M} UTC",
            "rejoined": list(restored.rejoined),
            "not_rejoined": list(restored.not_rejoined),
            "history_lines": summary.history_lines,
        }

    data = run(work)
    lines = [
        f"restored {printable(data['username'])} into {data['home']} as a new device "
        f"{printable(data['device'])} (backup of {data['exported_at']}, "
        f"{_count(data['history_lines'], 'line')} of history)"
    ]
    lines += [f"rejoined {printable(name)}" for name in data["rejoined"]]
    lines += [
        f"not rejoined yet: {printable(name)} (the next qpq command tries again)"
        for name in data["not_rejoined"]
    ]
    emit(opts.as_json, data, "\n".join(lines))
