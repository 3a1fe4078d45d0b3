"""Queries for blind A/B rounds: rounds, their pairs and one vote per person per pair.

Votes are upserts (unique on pair + voter: a later click replaces the earlier one). A round takes
votes while it is open and before its deadline; :func:`cast_vote` raises :class:`RoundClosed`
otherwise. To close a round consistently, in one transaction::

    if close_round(session=s, round_id=r):        # False: someone else closed it
        battles = all_battles(session=s, round_id=r)
        save_result(session=s, round_id=r, result=...)

Closing first means no vote can land after the votes were read: on PostgreSQL a vote holds a share
lock on its round while it writes, on SQLite a vote re-checks the round after writing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple, cast

from sqlalchemy import func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from storage.models import ABPair, ABRound, ABVote, utcnow

CHOICES = ("a", "b", "tie", "both_bad")


class RoundClosed(Exception):
    """A vote on a round that is closed or past its deadline."""

    def __init__(self, round_id: int, *, past_deadline: bool = False) -> None:
        self.round_id = round_id
        # still open but past its deadline: nobody has closed it yet, so the caller may
        self.past_deadline = past_deadline
        reason = "past its deadline" if past_deadline else "closed"
        super().__init__(f"A/B round {round_id} is {reason}; votes are no longer accepted")


class UnknownPair(LookupError):
    """A vote on a pair that does not exist."""


class BattleRow(NamedTuple):
    """One vote in model terms, for the statistics (``outcome`` "a" = model_a won)."""

    round_id: int
    pair_id: int
    model_a: str
    model_b: str
    outcome: str
    left: str
    voter: str


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware, got {value!r}")
    return value


def create_round(
    *,
    session: Session,
    candidate: str,
    opponent: str,
    channel: str,
    deadline: datetime,
    created_by: str = "",
    job_id: int | None = None,
) -> ABRound:
    """Open a round of ``candidate`` against ``opponent`` that closes at ``deadline`` (aware)."""
    if candidate == opponent:
        raise ValueError(f"a round needs two different models, got {candidate!r} twice")
    row = ABRound(
        candidate=candidate,
        opponent=opponent,
        channel=channel,
        deadline=_aware(deadline, "deadline"),
        created_by=created_by,
        job_id=job_id,
    )
    session.add(row)
    session.flush()
    return row


def add_pair(
    *,
    session: Session,
    round_id: int,
    position: int,
    prompt: str,
    answer_a: str,
    answer_b: str,
    model_a: str,
    model_b: str,
    left: str,
) -> ABPair:
    """Add the pair at ``position`` (unique within the round); ``left`` is the model shown as A."""
    if left not in ("a", "b"):
        raise ValueError(f"left must be 'a' or 'b', not {left!r}")
    row = ABPair(
        round_id=round_id,
        position=position,
        prompt=prompt,
        answer_a=answer_a,
        answer_b=answer_b,
        model_a=model_a,
        model_b=model_b,
        left=left,
    )
    session.add(row)
    session.flush()
    return row


def set_round_message(*, session: Session, round_id: int, message_ts: str) -> None:
    session.exec(update(ABRound).where(col(ABRound.id) == round_id).values(message_ts=message_ts))


def set_pair_message(*, session: Session, pair_id: int, message_ts: str) -> None:
    session.exec(update(ABPair).where(col(ABPair.id) == pair_id).values(message_ts=message_ts))


def get_round(*, session: Session, round_id: int) -> ABRound | None:
    return session.get(ABRound, round_id)


def get_pair(*, session: Session, pair_id: int) -> ABPair | None:
    return session.get(ABPair, pair_id)


def pairs_of(*, session: Session, round_id: int) -> list[ABPair]:
    stmt = select(ABPair).where(ABPair.round_id == round_id).order_by(col(ABPair.position))
    return list(session.exec(stmt).all())


def _round_state(session: Session, round_id: int, lock: bool) -> tuple[str, datetime]:
    stmt = select(ABRound.status, ABRound.deadline).where(ABRound.id == round_id)
    if lock:
        # FOR SHARE on PostgreSQL: close_round's UPDATE waits for this vote to commit
        stmt = stmt.with_for_update(read=True)
    status, deadline = session.exec(stmt).one()
    return status, deadline


def _check_open(session: Session, round_id: int, now: datetime, lock: bool) -> None:
    status, deadline = _round_state(session, round_id, lock)
    if status != "open":
        raise RoundClosed(round_id)
    if now >= deadline:
        raise RoundClosed(round_id, past_deadline=True)


def _vote(session: Session, pair_id: int, voter: str) -> ABVote | None:
    stmt = select(ABVote).where(ABVote.pair_id == pair_id, ABVote.voter == voter)
    return session.exec(stmt.execution_options(populate_existing=True)).first()


def cast_vote(
    *,
    session: Session,
    pair_id: int,
    voter: str,
    choice: str,
    comment: str | None = None,
    now: datetime | None = None,
) -> bool:
    """Record ``voter``'s ``choice`` on a pair; returns True when it replaced an earlier vote.

    ``comment=None`` keeps an earlier comment. Raises :class:`UnknownPair`, :class:`RoundClosed`
    (closed or past the deadline) or ``ValueError`` (unknown choice).
    """
    if choice not in CHOICES:
        raise ValueError(f"choice must be one of {CHOICES}, not {choice!r}")
    now = _aware(now, "now") if now is not None else utcnow()
    pair = session.get(ABPair, pair_id)
    if pair is None:
        raise UnknownPair(f"no A/B pair {pair_id}")
    _check_open(session, pair.round_id, now, lock=True)

    values: dict[str, Any] = {"choice": choice, "updated_at": now}
    if comment is not None:
        values["comment"] = comment
    replace = (
        update(ABVote)
        .where(col(ABVote.pair_id) == pair_id, col(ABVote.voter) == voter)
        .values(**values)
    )
    # a savepoint, so that a refused vote leaves nothing behind even if the caller commits
    with session.begin_nested():
        # write before reading: on SQLite a transaction that reads and then writes fails at once
        # ("database is locked") if another click committed in between; a write waits its turn
        replaced = session.exec(replace).rowcount == 1
        if not replaced:
            try:
                with session.begin_nested():
                    session.add(
                        ABVote(
                            pair_id=pair_id,
                            voter=voter,
                            choice=choice,
                            comment=comment or "",
                            created_at=now,
                            updated_at=now,
                        )
                    )
                    session.flush()
            except IntegrityError:
                # the same person's concurrent click inserted first (PostgreSQL): replace it
                session.exec(replace)
                replaced = True
        # SQLite takes no share lock: now that this transaction holds the write lock, look again
        _check_open(session, pair.round_id, now, lock=False)
    return replaced


def set_comment(*, session: Session, pair_id: int, voter: str, comment: str) -> bool:
    """Attach a "why?" comment to ``voter``'s vote on a pair; False when there is no vote yet.
    Raises :class:`RoundClosed` like :func:`cast_vote`."""
    vote = _vote(session, pair_id, voter)
    if vote is None:
        return False
    pair = session.get(ABPair, pair_id)
    assert pair is not None  # a vote's pair exists (foreign key)
    _check_open(session, pair.round_id, utcnow(), lock=True)
    vote.comment = comment
    session.add(vote)
    session.flush()
    return True


def round_counts(*, session: Session, round_id: int) -> dict[int, dict[str, int]]:
    """Votes per pair of a round, by choice plus ``total``:
    ``{pair_id: {"a": 2, ..., "total": 5}}``, every pair present, in position order."""
    counts = {
        cast(int, p.id): dict.fromkeys((*CHOICES, "total"), 0)  # stored rows have ids
        for p in pairs_of(session=session, round_id=round_id)
    }
    stmt = (
        select(ABVote.pair_id, ABVote.choice, func.count())
        .join(ABPair, col(ABPair.id) == col(ABVote.pair_id))
        .where(ABPair.round_id == round_id)
        .group_by(col(ABVote.pair_id), col(ABVote.choice))
    )
    for pair_id, choice, n in session.exec(stmt).all():
        counts[pair_id][choice] += n
        counts[pair_id]["total"] += n
    return counts


def open_rounds(*, session: Session) -> list[ABRound]:
    """Every open round, earliest deadline first (to re-arm the scheduler after a restart)."""
    stmt = select(ABRound).where(ABRound.status == "open").order_by(col(ABRound.deadline))
    return list(session.exec(stmt).all())


def open_rounds_due(*, session: Session, now: datetime) -> list[ABRound]:
    """Open rounds whose deadline is at or before ``now`` (aware), earliest first."""
    stmt = (
        select(ABRound)
        .where(ABRound.status == "open", col(ABRound.deadline) <= _aware(now, "now"))
        .order_by(col(ABRound.deadline))
    )
    return list(session.exec(stmt).all())


def close_round(
    *,
    session: Session,
    round_id: int,
    now: datetime | None = None,
    result: dict[str, Any] | None = None,
) -> bool:
    """Close an open round; True when this call closed it, False when it was already closed (so
    that the deadline job and an early decision post the result once)."""
    values: dict[str, Any] = {"status": "closed", "closed_at": now or utcnow()}
    if result is not None:
        values["result"] = result
    stmt = (
        update(ABRound)
        .where(col(ABRound.id) == round_id, col(ABRound.status) == "open")
        .values(**values)
    )
    closed = session.exec(stmt).rowcount == 1
    # the identity map may hold the round as it was before the UPDATE
    row = session.get(ABRound, round_id)
    if row is not None:
        session.refresh(row)
    return closed


def save_result(*, session: Session, round_id: int, result: dict[str, Any]) -> None:
    """Store a round's statistics (JSON-safe: no NaN)."""
    session.exec(update(ABRound).where(col(ABRound.id) == round_id).values(result=result))
    row = session.get(ABRound, round_id)
    if row is not None:
        session.refresh(row)


def votes_with_pairs(
    *, session: Session, round_id: int | None = None
) -> list[tuple[ABPair, ABVote]]:
    """Every vote with its pair (of one round or all), by round, position, then vote."""
    stmt = select(ABPair, ABVote).join(ABVote, col(ABVote.pair_id) == col(ABPair.id))
    if round_id is not None:
        stmt = stmt.where(ABPair.round_id == round_id)
    stmt = stmt.order_by(col(ABPair.round_id), col(ABPair.position), col(ABVote.id))
    return [(pair, vote) for pair, vote in session.exec(stmt).all()]


def all_battles(*, session: Session, round_id: int | None = None) -> list[BattleRow]:
    """Every vote as a :class:`BattleRow` — across all rounds for Bradley–Terry, or one round's."""
    # sqlmodel types select() for at most four columns; these seven come back as a plain tuple
    stmt = select(  # type: ignore[call-overload]
        ABPair.round_id,
        ABPair.id,
        ABPair.model_a,
        ABPair.model_b,
        ABVote.choice,
        ABPair.left,
        ABVote.voter,
    ).join(ABVote, col(ABVote.pair_id) == col(ABPair.id))
    if round_id is not None:
        stmt = stmt.where(ABPair.round_id == round_id)
    stmt = stmt.order_by(col(ABPair.round_id), col(ABPair.position), col(ABVote.id))
    return [BattleRow(*row) for row in session.exec(stmt).all()]
