"""When two usernames are one name, and which names may be registered.

Two usernames are the same name when their keys are equal. The key starts
from the UTS #39 skeleton (Unicode Security Mechanisms, section 4
"Confusable Detection") of the NFKC case-folded name (UAX #15, #31),
computed by ICU's spoof checker: the Unicode Consortium's own
implementation, with the confusables data of its release. So ``\u0430lice``
(with a Cyrillic a), ``ALICE``, ``\uff41lice`` (fullwidth) and ``alice`` are
one name, and so are ``mallory`` and ``rnallory``.

Case folding and skeletons do not commute, and a key must hold up to both:

- a skeleton may be a capital (``0`` looks like ``O``, Cherokee ``\u13f4``
  like ``B``), so the key folds the skeleton again, until it stays the
  same: ``b0b`` and the Cherokee ``\u13f4\u13ac\u13ac`` are ``bob`` and ``bee``;
- ``I`` looks like ``l`` but folds to ``i``: ``aIice`` looks like
  ``alice`` while its fold ``aiice`` does not. A key of one name cannot keep
  ``aiice`` from ``alice`` and still join both to ``aIice``, so ``i`` and
  ``l`` are one letter in keys (``mike`` and ``mlke`` are one name: ``mIke``
  looks like the second and is the first in lower case).

Registration (:func:`check_registrable`, :func:`unfolded_key`) refuses more
than the key does: names that mix scripts beyond UTS #39's "moderately
restrictive" level (``\u13f4ob``, Cherokee and Latin; ``\u0430lice``), invisible
combining marks stacked on one letter, digits of several systems; and a name
whose skeleton taken *before* case folding is an existing name's key
(Greek capitals ``\u0391\u0392\u0395`` beside ``abe``: their fold
``\u03b1\u03b2\u03b5`` looks like neither).
Answers still carry the spelling that was registered.

Keys are stored. Another confusables table (a newer ICU) can give another
key for the same name, which is why the dependency is pinned to one
version: a change of version, or of this function, needs a migration that
recomputes the keys (migration 4 made keys skeletons; migration 7 folds
them again and joins ``i`` with ``l``).
"""

from __future__ import annotations

import unicodedata

import icu

from qpq_proto.errors import InvalidArgumentError

__all__ = ["check_registrable", "unfolded_key", "username_key"]

# Getting a skeleton does not change the checker: one serves every thread.
_SKELETONS = icu.SpoofChecker()
# The checker of registrations is set up once here and only read afterwards.
_REGISTRATION = icu.SpoofChecker()
_REGISTRATION.setRestrictionLevel(icu.URestrictionLevel.MODERATELY_RESTRICTIVE)
_REGISTRATION.setChecks(
    icu.USpoofChecks.RESTRICTION_LEVEL | icu.USpoofChecks.INVISIBLE | icu.USpoofChecks.MIXED_NUMBERS
)
#: Rounds of folding a skeleton again; ICU's data settles after one.
_MAX_ROUNDS = 4


def _fold(text: str) -> str:
    """NFKC_Casefold as UAX #31 uses it for identifiers."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def _skeleton(text: str) -> str:
    skeleton: str = _SKELETONS.getSkeleton(0, text)
    return skeleton


def username_key(username: str) -> str:
    """The uniqueness key of a username (see the module docstring).

    The skeleton of the NFKC case fold, folded and skeletonized again until
    it stays the same, with ``i`` written as ``l``.
    """
    key = _skeleton(_fold(username))
    for _ in range(_MAX_ROUNDS):
        again = _skeleton(_fold(key))
        if again == key:
            break
        key = again
    return key.replace("i", "l")


def unfolded_key(username: str) -> str:
    """The key of what ``username`` looks like before case folding: of its skeleton.

    Greek ``\u0391\u0392\u0395`` looks like ``ABE``: this is ``abe``'s key,
    although its own key (of ``\u03b1\u03b2\u03b5``) is another.
    """
    return username_key(_skeleton(unicodedata.normalize("NFKC", username)))


def check_registrable(username: str) -> None:
    """Raise InvalidArgumentError if ``username`` may not be registered.

    UTS #39 section 5.2: scripts mixed beyond "moderately restrictive"
    (Latin with one other script, but not with Cyrillic, Greek or Cherokee;
    Han with Hiragana, Katakana, Bopomofo or Hangul where they go together);
    section 5.4: digits of more than one numbering system; and the same
    nonspacing mark twice on one letter, which draws as one.
    """
    failed = _REGISTRATION.check(username)
    if failed & icu.USpoofChecks.RESTRICTION_LEVEL:
        raise InvalidArgumentError(
            "username mixes scripts that can pass for one another "
            "(use one script, or Latin with one that is not Cyrillic, Greek or Cherokee)",
            field="username",
        )
    if failed & icu.USpoofChecks.MIXED_NUMBERS:
        raise InvalidArgumentError(
            "username mixes digits of different numbering systems", field="username"
        )
    if failed:
        raise InvalidArgumentError(
            "username repeats a combining mark on one letter", field="username"
        )
