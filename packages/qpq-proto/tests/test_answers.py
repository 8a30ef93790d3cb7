"""Answer bytes a listening endpoint holds until the peer reads them (no I/O).

:class:`AnswerBook` counts one connection's answers, :class:`AnswerBudget`
those of all connections; the listening adapter measures and waits (its
tests run over QUIC in the server's and the fault harness's suites).
"""

from __future__ import annotations

import pytest

from qpq_proto.quic import SMALL_ANSWER_BYTES, AnswerBudget
from qpq_proto.quic._answers import AnswerBook

MIB = 1024 * 1024


def test_a_connection_reserves_within_its_window_and_a_first_answer_always_fits() -> None:
    book = AnswerBook(window=16 * MIB, budget=None)
    assert book.fits(0, 32 * MIB)  # holds nothing yet: any one answer can go
    book.reserve(0, 8 * MIB)
    assert book.fits(4, 8 * MIB)
    book.reserve(4, 8 * MIB)
    assert not book.fits(8, 1)
    # Written, the answer counts as what QUIC holds, no longer as reserved.
    book.reserve(0, 0)
    assert book.measure(0, 7 * MIB, now=0.0) is False
    assert book.windowed == 15 * MIB
    assert book.fits(8, MIB)
    assert not book.fits(8, MIB + 1)
    # Acknowledged bytes are progress, and free the window.
    assert book.measure(0, 2 * MIB, now=1.0) is True
    assert book.fits(8, 6 * MIB)
    assert book.held == 2 * MIB


def test_the_shared_budget_keeps_an_eighth_for_small_answers() -> None:
    budget = AnswerBudget(64 * MIB)
    first, second = AnswerBook(32 * MIB, budget), AnswerBook(32 * MIB, budget)
    first.reserve(0, 24 * MIB)
    second.reserve(0, 24 * MIB)
    assert budget.total == 48 * MIB
    assert first.fits(4, 8 * MIB)  # 56 MiB: seven eighths
    first.reserve(4, 8 * MIB)
    assert not second.fits(4, SMALL_ANSWER_BYTES + 1)
    assert second.fits(4, SMALL_ANSWER_BYTES)  # the last eighth is for small answers
    first.close()
    second.close()
    assert budget.total == 0
    # Nothing held: even an answer larger than the whole budget goes (alone).
    assert AnswerBook(MIB, budget).fits(0, 128 * MIB)


def test_released_bytes_wake_the_watchers() -> None:
    budget = AnswerBudget(16 * MIB)
    book = AnswerBook(16 * MIB, budget)
    woken: list[str] = []
    budget.watch(lambda: woken.append("released"))
    book.reserve(0, MIB)
    assert woken == []
    book.reserve(0, 0)
    assert woken == ["released"]


def test_an_answer_the_peer_takes_none_of_stalls_and_is_forgotten_whole() -> None:
    budget = AnswerBudget(64 * MIB)
    book = AnswerBook(16 * MIB, budget)
    book.measure(0, 4 * MIB, now=10.0)
    book.measure(4, 4 * MIB, now=11.0)
    assert book.next_stall(5.0, 30.0) == 15.0
    book.measure(0, 3 * MIB, now=14.0)  # the peer took some: the clock starts again
    assert book.stalled(15.5, 5.0, 30.0) == []
    assert book.stalled(16.0, 5.0, 30.0) == [4]
    book.forget(4)
    assert budget.total == 3 * MIB
    assert book.stalled(19.0, 5.0, 30.0) == [0]
    book.close()
    assert budget.total == 0
    assert book.holding() == []


def test_an_event_stream_counts_against_the_budget_not_the_window() -> None:
    budget = AnswerBudget(64 * MIB)
    book = AnswerBook(16 * MIB, budget)
    book.exclude_from_window(8)
    book.measure(8, 12 * MIB, now=0.0)
    assert book.windowed == 0
    assert budget.total == 12 * MIB
    assert book.fits(0, 16 * MIB)  # a call's answer still has the whole window
    # Its own stall time applies to it.
    assert book.stalled(20.0, 10.0, 30.0) == []
    assert book.stalled(30.0, 10.0, 30.0) == [8]
    book.stream_ended(8)
    assert budget.total == 12 * MIB  # what QUIC holds stays counted until it goes
    book.measure(8, 0, now=31.0)
    assert budget.total == 0


def test_room_goes_first_to_peers_that_read_then_to_those_holding_least_then_in_turn() -> None:
    budget = AnswerBudget(16 * MIB)
    holder = AnswerBook(16 * MIB, budget)
    holder.measure(0, 10 * MIB, now=0.0)
    staller, early, late = (AnswerBook(16 * MIB, budget) for _ in range(3))
    staller.stalls = 1
    for book in (staller, early, late):
        assert not book.fits(0, 8 * MIB)
        budget.wait_in_line(book)
    assert budget.pressed
    holder.forget(0)
    # Room for one 8 MiB answer: the first that waited among those that never stalled.
    assert not staller.fits(0, 8 * MIB)
    assert not late.fits(0, 8 * MIB)
    assert early.fits(0, 8 * MIB)
    early.reserve(0, 8 * MIB)
    # Served, its next call waits behind the others; small answers never wait in line.
    assert late.fits(4, SMALL_ANSWER_BYTES)
    early.reserve(0, 0)
    early.measure(0, 0, now=1.0)
    assert late.fits(0, 8 * MIB)
    assert not early.fits(4, 8 * MIB)
    for book in (staller, early, late):
        budget.leave_line(book)
    assert not budget.pressed


def test_budgets_and_windows_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        AnswerBudget(0)
    with pytest.raises(ValueError, match="positive"):
        AnswerBook(0, None)
