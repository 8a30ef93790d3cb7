"""Reading what a member sent takes time linear in its size, whatever it holds.

A plaintext that takes quadratic time to read stalls every receive that
reaches it: a megabyte of escaped quotes once kept ``qpq recv`` busy for
hours. Each case below builds a pathological input at two sizes, ``n`` and
``4n``, and compares the time to read (and to render for a terminal) the
larger one with the smaller, in the same run: linear work costs about 4x,
quadratic work 16x. The bound is 8x, between the two; each ratio is the best of a few
measurements of the CPU time this process spent, since a slow moment on a
shared machine only ever makes one measurement larger. The smaller input is
large enough (128 KiB) that neither fits a core's cache: between 32 and
128 KiB the same linear code cost up to 7.5x, from cache misses alone.
"""

from __future__ import annotations

import time
import timeit
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from qpq_client._plaintext import (
    MAX_PLAINTEXT_BYTES,
    Declined,
    Text,
    Unsupported,
    decode,
    encode_declined,
    encode_text,
)
from qpq_client.cli._render import printable

#: About the size of the smaller input, in bytes (the larger is four times as large).
SMALL_BYTES = 128 * 1024
#: Most the four-times-larger input may cost, relative to the smaller.
GROWTH_BOUND = 8.0
#: A run this long is measured once: noise is small beside it.
SLOW_SECONDS = 0.5
#: What the patterns are made of: JSON's syntax, escapes, and characters that
#: terminals and Unicode handle specially (combining marks, controls, bidi).
PIECES = [
    '"', "\\", "\\\\", '\\"', "[", "]", "{", "}", ":", ",", "a", "0", "1", ".", "e", "-",
    "\u0301", "\u0335", "\u20dd", "\x00", "\x1b", "\x1b[31m", "\x9b", "\r", "\n", "\t",
    "\u202e", "\ud7ff", "\\u0041", "\\ud800", "null", "true", " ",
]  # fmt: skip
#: Where the pattern is repeated: alone, or inside a text message's body.
FRAMES = [
    ("", ""),
    ('{"v": 1, "type": "text", "sent_at": 1, "body": "', '"}'),
    ('{"v": 1, "type": "meta", "name": "', '"}'),
    ('{"v": 1, "type": "text", "body": ', "}"),
]


def read_and_render(plaintext: bytes) -> None:
    """All a client does with a received plaintext: decode it, then render what it shows."""
    content = decode(plaintext)
    if isinstance(content, Text):
        printable(content.body)
    elif isinstance(content, Unsupported):
        printable(content.reason)


def cost(plaintext: bytes) -> float:
    """Seconds to read and render ``plaintext``: the best of several runs when it is quick."""
    once = timeit.timeit(lambda: read_and_render(plaintext), number=1, timer=time.process_time)
    if once > SLOW_SECONDS:
        return once  # slow enough that noise does not matter (and old code was this slow)
    runs = timeit.repeat(
        lambda: read_and_render(plaintext), number=3, repeat=5, timer=time.process_time
    )
    return min(once, min(runs) / 3)


def growth(make: Callable[[int], bytes], pattern: str) -> float:
    """The cost of ``make(4 * count)`` over that of ``make(count)``: the best of three.

    ``count`` repeats ``pattern`` to about :data:`SMALL_BYTES`.
    """
    count = max(1, SMALL_BYTES // len(pattern.encode("utf-8", "surrogatepass")))
    small, large = make(count), make(4 * count)
    assert len(large) <= MAX_PLAINTEXT_BYTES, "the larger input must be read, not refused"
    best = float("inf")
    for _ in range(3):
        large_cost = cost(large)
        best = min(best, large_cost / cost(small))
        if best <= GROWTH_BOUND or large_cost > SLOW_SECONDS:
            break
    return best


def framed(prefix: str, pattern: str, suffix: str) -> Callable[[int], bytes]:
    return lambda count: (prefix + pattern * count + suffix).encode("utf-8", "surrogatepass")


NAMED = {
    "escaped quotes, never closed": ('"', '\\"', ""),
    "a backslash run": ('"', "\\", ""),
    "backslashes and quotes": ("", '\\"\\\\"', ""),
    "empty strings": ("", '""', ""),
    "quotes": ("", '"', ""),
    "deep brackets": ("", "[", ""),
    "unbalanced brackets": ("", "[]]", ""),
    "brackets inside a string": ('{"v": 1, "type": "text", "body": "', "[{", '"}'),
    "combining marks": ('{"v": 1, "type": "text", "sent_at": 1, "body": "a', "\u0301", '"}'),
    "control characters": ('{"v": 1, "type": "text", "sent_at": 1, "body": "', "\x1b\x9b", '"}'),
    "escaped controls": ('{"v": 1, "type": "text", "body": "', "\\u001b", '"}'),
    "a group name of combining marks": ('{"v": 1, "type": "meta", "name": "x', "\u0335", '"}'),
    "a number": ('{"v": 1, "type": "text", "body": "", "sent_at": 1', "0", "}"),
}


@pytest.mark.parametrize("name", NAMED)
def test_named_pathological_inputs_cost_linear_time(name: str) -> None:
    prefix, pattern, suffix = NAMED[name]
    ratio = growth(framed(prefix, pattern, suffix), pattern)
    assert ratio <= GROWTH_BOUND, f"{name}: 4x the input cost {ratio:.1f}x the time"


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    frame=st.sampled_from(FRAMES),
    pattern=st.lists(st.sampled_from(PIECES), min_size=1, max_size=6).map("".join),
)
@example(frame=FRAMES[0], pattern='\\"')
@example(frame=FRAMES[1], pattern="\\")
def test_any_repeated_pattern_costs_linear_time(frame: tuple[str, str], pattern: str) -> None:
    prefix, suffix = frame
    ratio = growth(framed(prefix, pattern, suffix), pattern)
    assert ratio <= GROWTH_BOUND, f"{pattern!r}: 4x the input cost {ratio:.1f}x the time"


def test_the_reported_poison_is_read_as_unsupported() -> None:
    poison = b'"' + b'\\"' * ((MAX_PLAINTEXT_BYTES - 1) // 2)
    assert len(poison) <= MAX_PLAINTEXT_BYTES
    assert decode(poison) == Unsupported("not a qpq message")


def test_strings_still_hide_their_brackets_from_the_nesting_check() -> None:
    deep_text = encode_text("[" * 100 + '\\"{' * 50, 1)
    assert decode(deep_text) == Text("[" * 100 + '\\"{' * 50, 1)
    nested = b'{"v": 1, "type": "text", "body": "x", "sent_at": 1, "extra": ' + b"[" * 40
    nested += b"]" * 40 + b"}"
    assert decode(nested) == Unsupported("nested too deep")
    unterminated = b'{"v": 1, "type": "text", "body": "[[[' + b"\\" * 3
    assert decode(unterminated) == Unsupported("not a qpq message")


def test_a_decline_reads_back() -> None:
    assert decode(encode_declined()) == Declined()
    # Anything else in it is ignored, as newer clients may add fields.
    assert decode(b'{"v": 1, "type": "declined", "why": "busy"}') == Declined()
