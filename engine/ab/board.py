"""The leaderboard: every model compared in any round so far, on one Bradley–Terry scale.

One function, read by a round's result message and by the Home tab, so both show the same board.

- **Anchor: the base model**, fixed at 1000. Every first round is against it (nothing is deployed
  yet), and it never changes, so a rating means the same thing in every post: points above or
  below the model nobody trained. Anchoring on "the most compared model" instead would move the
  zero point whenever another model overtook it in votes, and two posts would disagree.
- **Failure rule: no board rather than a wrong one.** Until the base model has votes there is no
  scale to put ratings on, and a model never compared with the base — directly or through others
  — cannot be placed on it (it is left out, with a warning). If the fit itself fails, the board
  is empty and the reason is logged: a leaderboard is never a reason for a round's result or the
  Home tab not to be shown.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlmodel import Session

from engine.ab.stats import MIN_RESAMPLES, Battle, LeaderboardRow, leaderboard
from storage import ab

log = logging.getLogger(__name__)

BASE = "base"  # the base model's name in rounds and on the leaderboard (its anchor)


def battles_of(*, session: Session, round_id: int | None = None) -> list[Battle]:
    """Every stored vote as a :class:`Battle` (one round's with ``round_id``)."""
    return [Battle(r.model_a, r.model_b, r.outcome, r.left, pair=r.pair_id)
            for r in ab.all_battles(session=session, round_id=round_id)]


def overall_leaderboard(battles: Sequence[Battle]) -> list[LeaderboardRow]:
    """The leaderboard over ``battles`` anchored on the base model, best first; empty when the
    base model has no votes or the fit fails (see the module docstring)."""
    if not any(BASE in (b.model_a, b.model_b) for b in battles):
        return []
    try:
        return leaderboard(battles, BASE, n_resamples=MIN_RESAMPLES, seed=0)
    except Exception:  # noqa: BLE001 — logged; the result and the Home tab go out without it
        log.exception("could not fit the leaderboard over %d votes", len(battles))
        return []


__all__ = ["BASE", "battles_of", "overall_leaderboard"]
