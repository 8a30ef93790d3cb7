"""When two usernames are one name, and which names may be registered.

A name is shown as it was registered and looked up whatever its case:
whoever sees ``Alice`` may type ``alice`` to find her. So two usernames are
one name when they are one up to case, or when one, as spelled, looks like
the other up to case. Each name has a small set of keys
(:func:`username_keys`) and two names are one when their sets meet; the
database holds each key once (table ``username_keys``), so it decides
which of two look-alikes registered at once comes first.

Both keys come from the UTS #39 skeleton (Unicode Security Mechanisms,
section 4 "Confusable Detection"), computed by ICU's spoof checker: the
Unicode Consortium's own implementation, with the confusables data of its
release.

- The *folded key* (:func:`username_key`) is what the name is up to case:
  the skeleton of its NFKC case fold (UAX #15, #31), folded and taken
  again until it stays the same, since a skeleton may be a capital (``0``
  looks like ``O``, Cherokee ``\u13f4`` like ``B``). ``ALICE``, ``alice``,
  fullwidth ``\uff41lice``, ``b0b``/``bob``, ``mallory``/``rnallory``,
  ``bob1``/``bobl`` and the Cherokee ``\u13f4\u13ac\u13ac``/``bee`` each
  share it.
- The *key of the look* (:func:`unfolded_key`) is the folded key of what the
  name looks like as spelled: of its case-sensitive skeleton. Case folding
  and skeletons do not commute (UTS #39 skeletons are case-sensitive): a
  capital ``I`` looks like ``l`` but folds to ``i``, and Greek capitals
  ``\u0391\u0392\u0395`` look like ``ABE`` while their fold
  ``\u03b1\u03b2\u03b5`` looks like neither ``abe`` nor ``ABE``. One shape
  stands for both a capital and another small letter: the stroke that
  skeletons write ``l`` (``I``, ``l``, ``1``, ``|``, Greek and Cyrillic
  capital iotas, the Cyrillic palochka; the data makes the small palochka
  ``\u04cf`` an ``i``, but it is drawn as the capital, and the look takes
  it so). Among capitals it is read as ``I``, elsewhere as ``l``: a
  stroke is read as ``i`` when its nearest neighbours within its word are
  all capitals (other strokes and combining marks passed over; a digit or a
  small letter is no capital; a character that is neither a letter nor a
  digit ends the word; at least one neighbour must be there).

So, writing a set as {folded key, key of the look}, each key by a plain
name whose folded key it is:

- ``alice`` {alice}; ``ALICE`` {alice}; ``aIice`` {aiice, alice}; ``AIice``
  {aiice, alice} (it reads ``Alice``); ``ALlCE`` {allce, alice} (it reads
  ``ALICE``): all three are refused beside ``alice``, while ``allce``
  {allce} is a name of its own.
- ``mike`` {mike}; ``mlke`` {mlke}; ``mIke`` {mike, mlke}; ``MIKE`` {mike}:
  ``mike`` and ``mlke`` may both be registered, ``mIke`` beside neither.
  ``Ian`` {ian, lan} looks like ``lan``; ``IAN`` {ian} does not.
- ``b0b`` {bob} (``bOb``, folded), ``n0on`` {noon}, ``rnallory`` {mallory},
  fullwidth ``\uff43\uff41\uff52\uff4f\uff4c`` {carol}, ``b1ll`` {blll},
  ``B1LL`` {blll, bill} (it reads ``BILL``).
- Greek ``\u0391\u0392\u0395`` {its fold's key, abe}; Cherokee
  ``\u13f4\u13ac\u13ac`` {bee}; Greek ``\u0394\u03b7\u03bc\u03ae\u03c4\u03c1\u03b7\u03c2``
  and ``\u03b4\u03b7\u03bc\u03ae\u03c4\u03c1\u03b7\u03c2`` one folded key.

Two keys are one reading of each stroke, not every reading: a stroke
between a capital and a small letter is read as ``l`` (``AIice`` reads
``Alice``), so ``Mla`` may sit beside ``mia`` though some could read it as
``MIa``.

Registration (:func:`check_registrable`) also refuses names that mix
scripts beyond UTS #39's "moderately restrictive" level (``\u13f4ob``,
Cherokee and Latin; ``\u0430lice`` with a Cyrillic a), invisible combining
marks stacked on one letter, and digits of several systems. Answers carry
the spelling that was registered.

Keys are stored. Another confusables table (a newer ICU) can give another
key for the same name, which is why the dependency is pinned to one
version: a change of version, or of these functions, needs a migration that
recomputes the keys from the stored spellings (migration 4 made keys
skeletons; migration 8 gives each name its set of keys).
"""

from __future__ import annotations

import unicodedata

import icu

from qpq_proto.errors import InvalidArgumentError

__all__ = ["check_registrable", "unfolded_key", "username_key", "username_keys"]

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
#: What skeletons write for the stroke that is a capital I and a small l.
_STROKE = "l"
#: The small palochka is drawn as the capital, a bare stroke like l, but the
#: confusables data makes it i: the look takes it as the capital.
_DRAWN_AS_STROKE = str.maketrans({"\u04cf": "\u04c0"})


def _fold(text: str) -> str:
    """NFKC_Casefold as UAX #31 uses it for identifiers."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def _skeleton(text: str) -> str:
    skeleton: str = _SKELETONS.getSkeleton(0, text)
    return skeleton


def username_key(username: str) -> str:
    """The folded key of a username: what it is up to case (see the module docstring).

    The skeleton of the NFKC case fold, folded and skeletonized again until
    it stays the same.
    """
    key = _skeleton(_fold(username))
    for _ in range(_MAX_ROUNDS):
        again = _skeleton(_fold(key))
        if again == key:
            break
        key = again
    return key


def _capital_beside(skeleton: str, indexes: range) -> bool | None:
    """Whether the stroke's neighbour at ``indexes`` is a capital; None at the word's end.

    Strokes and combining marks are passed over; a character that is
    neither a letter nor a digit ends the word (``-``, ``_``, ``.``).
    """
    for index in indexes:
        char = skeleton[index]
        category = unicodedata.category(char)
        if char == _STROKE or category[0] == "M":
            continue
        if category[0] not in "LN":
            return None
        return category == "Lu"
    return None


def _read_strokes(skeleton: str) -> str:
    """``skeleton`` with each stroke among capitals read as ``i`` (a capital I)."""
    chars = list(skeleton)
    for index, char in enumerate(chars):
        if char != _STROKE:
            continue
        sides = (
            _capital_beside(skeleton, range(index - 1, -1, -1)),
            _capital_beside(skeleton, range(index + 1, len(skeleton))),
        )
        beside = [capital for capital in sides if capital is not None]
        if beside and all(beside):
            chars[index] = "i"
    return "".join(chars)


def unfolded_key(username: str) -> str:
    """The key of what ``username`` looks like as spelled, before case folding.

    The folded key of its case-sensitive skeleton, a stroke among capitals
    read as ``I``: Greek ``\u0391\u0392\u0395`` looks like ``ABE``, so this
    is ``abe``'s key, although its own folded key (of
    ``\u03b1\u03b2\u03b5``) is another; ``aIice`` gives ``alice``,
    ``ALICE`` gives ``alice`` too.
    """
    spelled = unicodedata.normalize("NFKC", username).translate(_DRAWN_AS_STROKE)
    return username_key(_read_strokes(_skeleton(spelled)))


def username_keys(username: str) -> tuple[str, ...]:
    """The keys of a username: its folded key first, then the key of its look if another.

    Two usernames are one name when their keys meet (see the module docstring).
    """
    folded, look = username_key(username), unfolded_key(username)
    return (folded,) if look == folded else (folded, look)


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
