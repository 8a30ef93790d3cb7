"""When two usernames are one name: case, compatibility forms and confusables.

Two usernames are the same name when their keys are equal. The key is the
UTS #39 skeleton (Unicode Security Mechanisms, section 4 "Confusable
Detection") of the NFKC case-folded name (UAX #15, #31), computed by ICU's
spoof checker: the Unicode Consortium's own implementation, with the
confusables data of its release. So ``\u0430lice`` (with a Cyrillic a),
``ALICE`` and ``alice`` are one name, and so are ``bob1`` and ``bobl``. Answers
still carry the spelling that was registered.

Keys are stored. Another confusables table (a newer ICU) can give another
key for the same name, which is why the dependency is pinned to one
version: a change of version needs a migration that recomputes the keys,
as migration 4 did when keys became skeletons.
"""

from __future__ import annotations

import unicodedata

import icu

__all__ = ["username_key"]

# Getting a skeleton does not change the checker: one serves every thread.
_SPOOF_CHECKER = icu.SpoofChecker()


def username_key(username: str) -> str:
    """The uniqueness key of a username: skeleton(NFKC_Casefold(username))."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", username).casefold())
    skeleton: str = _SPOOF_CHECKER.getSkeleton(0, folded)
    return skeleton
