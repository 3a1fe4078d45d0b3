"""Queries for retention (``engine.retention``): finished jobs' run folders, old ``/ask`` audit
rows, old A/B battle text."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, update
from sqlmodel import Session, col, select

from storage.jobs import TERMINAL
from storage.models import ABPair, ABRound, ABVote, AskFeedback, AskLog, Job, Model


@dataclass(frozen=True)
class FinishedRun:
    job_id: int
    state: str
    run_dir: str
    finished_at: datetime | None
    registered: bool  # the registry holds a model of this job


def finished_runs(*, session: Session) -> list[FinishedRun]:
    """Every finished job with a run folder on record, oldest first."""
    registered = set(session.exec(select(Model.job_id).where(col(Model.job_id).is_not(None))).all())
    jobs = session.exec(
        select(Job)
        .where(col(Job.state).in_(sorted(TERMINAL)), col(Job.run_dir) != "")
        .order_by(col(Job.id))
    ).all()
    return [
        FinishedRun(
            job.id, job.state, job.run_dir, job.finished_at or job.created_at, job.id in registered
        )
        for job in jobs
        if job.id is not None and job.run_dir
    ]


def delete_asks_before(*, session: Session, before: datetime) -> int:
    """Delete ``/ask`` audit rows (and their 👍/👎) created before ``before``; returns how many."""
    old = select(AskLog.id).where(col(AskLog.created_at) < before)
    # explicit: SQLite enforces ON DELETE CASCADE only with foreign keys switched on
    session.exec(delete(AskFeedback).where(col(AskFeedback.ask_id).in_(old)))
    result = session.exec(delete(AskLog).where(col(AskLog.created_at) < before))
    return int(result.rowcount or 0)


def blank_ab_text_before(*, session: Session, before: datetime) -> int:
    """Blank the prompt and answers of pairs (and the comments of votes) of A/B rounds closed
    before ``before``; the votes' outcomes stay for the leaderboard. Returns pairs blanked."""
    rounds = select(ABRound.id).where(ABRound.status == "closed", col(ABRound.closed_at) < before)
    pairs = select(ABPair.id).where(col(ABPair.round_id).in_(rounds))
    session.exec(
        update(ABVote)
        .where(col(ABVote.pair_id).in_(pairs), col(ABVote.comment) != "")
        .values(comment="")
    )
    result = session.exec(
        update(ABPair)
        .where(
            col(ABPair.round_id).in_(rounds),
            (col(ABPair.prompt) != "")
            | (col(ABPair.answer_a) != "")
            | (col(ABPair.answer_b) != ""),
        )
        .values(prompt="", answer_a="", answer_b="")
    )
    return int(result.rowcount or 0)


__all__ = ["FinishedRun", "blank_ab_text_before", "delete_asks_before", "finished_runs"]
