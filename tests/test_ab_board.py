"""The one leaderboard (engine.ab.board): anchored on the base model, and no board rather than a
wrong one — read the same by a round's result and by the Home tab."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from engine.ab import board
from engine.ab.board import BASE, overall_leaderboard
from engine.ab.stats import Battle


def votes(a: str, b: str, wins_a: int, wins_b: int, start: int = 0) -> list[Battle]:
    out = [Battle(a, b, "a", pair=(a, b, start + i)) for i in range(wins_a)]
    return out + [Battle(a, b, "b", pair=(a, b, start + wins_a + i)) for i in range(wins_b)]


def test_the_base_model_is_the_anchor_even_when_another_model_has_more_votes():
    battles = votes("tt-1", BASE, 8, 4) + votes("tt-2", "tt-1", 14, 6, start=100)
    rows = overall_leaderboard(battles)
    ratings = {r.model: r.rating for r in rows}
    assert ratings[BASE] == pytest.approx(1000.0)  # tt-1 has more votes, base stays the zero point
    assert [r.model for r in rows] == ["tt-2", "tt-1", BASE]


def test_no_board_until_the_base_model_has_votes():
    assert overall_leaderboard([]) == []
    assert overall_leaderboard(votes("tt-2", "tt-1", 6, 2)) == []


def test_a_model_never_compared_with_the_base_is_left_out():
    rows = overall_leaderboard(votes("tt-1", BASE, 5, 3) + votes("tt-3", "tt-4", 4, 2, start=50))
    assert {r.model for r in rows} == {"tt-1", BASE}


def test_a_fit_that_fails_leaves_the_board_empty_and_says_why(monkeypatch, caplog):
    def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise FloatingPointError("the optimiser diverged")

    monkeypatch.setattr(board, "leaderboard", broken)
    with caplog.at_level(logging.ERROR, logger="engine.ab.board"):
        assert overall_leaderboard(votes("tt-1", BASE, 3, 1)) == []
    assert "could not fit the leaderboard over 4 votes" in caplog.text
    assert "the optimiser diverged" in caplog.text


def test_home_and_rounds_read_the_same_board(db):
    from bot.ab_rounds import ABRoundService
    from bot.home import gather
    from storage import ab
    from storage.db import session_scope
    from storage.models import utcnow

    with session_scope(db) as s:
        rnd = ab.create_round(session=s, candidate="tt-1", opponent=BASE, channel="C1",
                              deadline=utcnow() + timedelta(hours=1), created_by="U1", job_id=None)
        for i in range(6):
            pair = ab.add_pair(session=s, round_id=rnd.id, position=i, prompt=f"q{i}", answer_a="a",
                               answer_b="b", model_a="tt-1", model_b=BASE, left="a")
            ab.cast_vote(session=s, pair_id=pair.id, voter="U2", choice="a" if i < 4 else "b")
    service = ABRoundService(db, client=None, answers=None)
    rows = service.leaderboard()
    assert [r.model for r in rows] == ["tt-1", BASE]
    home = gather(db).leaderboard
    assert [r["model"] for r in home] == [r.model for r in rows]
    assert [r["rating"] for r in home] == [r.rating for r in rows]
