"""Whether a new profile's passphrase is one an attacker guesses at once (``qpq init``).

The passphrase encrypts the profile (SQLCipher derives its key from it):
whoever copies the files can try guesses offline for as long as they
like. zxcvbn (the estimator the server applies to its own secrets, see
qpq_server._checks) finds dictionary words, names, repeats, sequences,
keyboard walks and dates; its score 3 means about 10^8 guesses or more.
"""

from __future__ import annotations

__all__ = ["MIN_SCORE", "passphrase_weakness"]

#: zxcvbn's score (0 to 4) a passphrase needs: 3, "safely unguessable",
#: at least 10^8 guesses.
MIN_SCORE = 3
#: zxcvbn's own bound on its work: a longer passphrase is judged by its start.
_ESTIMATE_CHARS = 72


def passphrase_weakness(passphrase: str, username: str) -> str | None:
    """Why ``passphrase`` is too weak, in one line without it; None when it is not."""
    from zxcvbn import zxcvbn  # noqa: PLC0415 - only `qpq init` pays for its dictionaries

    found = zxcvbn(passphrase[:_ESTIMATE_CHARS], user_inputs=[username, "qpq"])
    if int(found["score"]) >= MIN_SCORE:
        return None
    warning = str(found["feedback"].get("warning") or "").rstrip(".")
    why = f": {warning[0].lower()}{warning[1:]}" if warning else ""
    return (
        f"that passphrase is guessed quickly (about 10^{float(found['guesses_log10']):.0f}"
        f" guesses{why}); use a longer one, e.g. four or more random words,"
        " or pass --weak-passphrase-ok"
    )
