"""Queries for training jobs: creation, the atomic claim, leases, transitions and events.

States: ``validating → queued → running → succeeded | failed | cancelled``; a running job whose
lease expired goes back to ``queued`` (its run folder is kept, so it resumes). Every state change
is a compare-and-set (``UPDATE … WHERE state = <the state we read>``): of two writers racing on one
job — a worker finishing it and an admin cancelling it — exactly one wins, the other gets a
``TransitionError``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import CursorResult, Result, func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from storage.models import Job, JobEvent, utcnow

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
STATES = ("validating", "queued", "running", "succeeded", "failed", "cancelled")
TRANSITIONS: dict[str, frozenset[str]] = {
    # validating → failed: the request was checked and refused
    "validating": frozenset({"queued", "failed", "cancelled"}),
    "queued": frozenset({"running", "cancelled", "failed"}),
    # running → queued: the lease expired and the job is retried from its last checkpoint
    "running": frozenset({"succeeded", "failed", "cancelled", "queued"}),
}
_NO_SYNC = {"synchronize_session": False}


class TransitionError(ValueError):
    """A job cannot move from its state to the one asked for."""


def create_job(
    *, session: Session, request_key: str | None = None, **fields: Any
) -> tuple[Job, bool]:
    """A new job, or the existing one for ``request_key``; returns (job, created).

    The same request (a Slack trigger, a retried event) never makes two jobs: the unique
    constraint on ``request_key`` settles a race between two inserts.
    """
    if request_key:
        existing = session.exec(select(Job).where(Job.request_key == request_key)).first()
        if existing is not None:
            return existing, False
    try:
        with session.begin_nested():
            job = Job(request_key=request_key, **fields)
            session.add(job)
            session.flush()
    except IntegrityError:
        if not request_key:
            raise
        existing = session.exec(select(Job).where(Job.request_key == request_key)).first()
        if existing is None:
            raise
        return existing, False
    return job, True


def get_job(*, session: Session, job_id: int) -> Job | None:
    return session.get(Job, job_id)


def list_jobs(*, session: Session, limit: int = 20, state: str | None = None) -> list[Job]:
    """Newest first."""
    query = select(Job).order_by(col(Job.id).desc()).limit(limit)
    if state is not None:
        query = query.where(Job.state == state)
    return list(session.exec(query).all())


def count_by_state(*, session: Session) -> dict[str, int]:
    """How many jobs are in each state (every state listed, 0 when none)."""
    counts = dict.fromkeys(STATES, 0)
    for state, n in session.exec(select(Job.state, func.count()).group_by(Job.state)).all():
        counts[state] = int(n)
    return counts


def set_state(
    *, session: Session, job: Job, state: str, error: str = "", now: datetime | None = None
) -> Job:
    """Move ``job`` to ``state`` if the transition is allowed and nobody changed the job since it
    was read; raises ``TransitionError`` otherwise. ``job`` is refreshed either way."""
    if state not in TRANSITIONS.get(job.state, frozenset()):
        raise TransitionError(f"job {job.id} is {job.state} and cannot become {state}")
    now = now or utcnow()
    values: dict[str, Any] = {"state": state}
    if error:
        values["error"] = error
    if state == "running" and job.started_at is None:
        values["started_at"] = now
    if state in TERMINAL:
        values["finished_at"] = now
    if state in TERMINAL or state == "queued":
        values["lease_owner"] = None
        values["lease_expires_at"] = None
    session.flush()  # pending changes to the job first, so the refresh below does not drop them
    result = session.execute(
        update(Job).where(col(Job.id) == job.id, col(Job.state) == job.state).values(**values),
        execution_options=_NO_SYNC,
    )
    was = job.state
    session.refresh(job)
    if _rowcount(result) != 1:
        raise TransitionError(
            f"job {job.id} was {was} but is now {job.state} and cannot become {state}"
        )
    return job


def _rowcount(result: Result[Any]) -> int:
    """How many rows an UPDATE matched (``Session.execute`` types its result as any Result)."""
    assert isinstance(result, CursorResult)
    return result.rowcount


def request_cancel(*, session: Session, job: Job, reason: str = "cancelled by an admin") -> Job:
    """Cancel a job that has not finished. A running one is stopped by its worker, which polls
    the job's state and cancels the training program."""
    if job.state in TERMINAL:
        raise TransitionError(f"job {job.id} already {job.state}")
    return set_state(session=session, job=job, state="cancelled", error=reason)


def claim_next_job(
    *, session: Session, worker_id: str, lease_seconds: float, now: datetime | None = None
) -> Job | None:
    """Claim the oldest queued job for ``worker_id`` (state running, attempts + 1, a lease of
    ``lease_seconds``); None when no job is queued. The caller commits.

    PostgreSQL: ``SELECT … FOR UPDATE SKIP LOCKED`` — claimers never wait on one another, each
    takes the oldest row nobody else holds. SQLite has no row locks; a conditional
    ``UPDATE … WHERE id = ? AND state = 'queued'`` takes the database's single write lock, so of
    two claimers only one sees a row count of 1, and the other moves on to the next job.
    """
    now = now or utcnow()
    values = {
        "state": "running",
        "lease_owner": worker_id,
        "lease_expires_at": now + timedelta(seconds=lease_seconds),
        "attempts": Job.attempts + 1,
    }
    if session.get_bind().dialect.name == "postgresql":
        job_id = session.exec(
            select(Job.id)
            .where(Job.state == "queued")
            .order_by(col(Job.id))
            .limit(1)
            .with_for_update(skip_locked=True)
        ).first()
        if job_id is None:
            return None
        session.execute(
            update(Job).where(col(Job.id) == job_id).values(**values), execution_options=_NO_SYNC
        )
        return _started(session, job_id, now)
    while True:
        candidates = session.exec(
            select(Job.id).where(Job.state == "queued").order_by(col(Job.id)).limit(8)
        ).all()
        if not candidates:
            return None
        for job_id in candidates:
            assert job_id is not None  # read from a stored row
            result = session.execute(
                update(Job)
                .where(col(Job.id) == job_id, col(Job.state) == "queued")
                .values(**values),
                execution_options=_NO_SYNC,
            )
            if _rowcount(result) == 1:
                return _started(session, job_id, now)
        # every candidate went to another worker between our read and our write: look again


def _started(session: Session, job_id: int, now: datetime) -> Job:
    session.execute(
        update(Job)
        .where(col(Job.id) == job_id, col(Job.started_at).is_(None))
        .values(started_at=now),
        execution_options=_NO_SYNC,
    )
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    return job


def renew_lease(
    *,
    session: Session,
    job_id: int,
    worker_id: str,
    lease_seconds: float,
    now: datetime | None = None,
) -> bool:
    """Extend the lease; False when this worker no longer holds the job (its lease expired and
    the job was re-queued or claimed by another worker, or the job was cancelled)."""
    now = now or utcnow()
    result = session.execute(
        update(Job)
        .where(
            col(Job.id) == job_id, col(Job.lease_owner) == worker_id, col(Job.state) == "running"
        )
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds)),
        execution_options=_NO_SYNC,
    )
    return _rowcount(result) == 1


def requeue_expired(
    *, session: Session, now: datetime | None = None, max_attempts: int | None = None
) -> list[int]:
    """Running jobs whose worker stopped renewing go back to the queue and resume from their last
    checkpoint; returns their ids. A job that has already used ``max_attempts`` fails instead,
    so a job that kills every worker that runs it does not loop for ever."""
    now = now or utcnow()
    expired = session.exec(
        select(Job.id, Job.attempts).where(Job.state == "running", col(Job.lease_expires_at) < now)
    ).all()
    requeued = []
    for job_id, attempts in expired:
        assert job_id is not None  # read from a stored row
        give_up = max_attempts is not None and attempts >= max_attempts
        values: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None}
        if give_up:
            values |= {
                "state": "failed",
                "finished_at": now,
                "error": (
                    f"its worker stopped answering on each of {attempts} attempts, so it was given "
                    "up"
                ),
            }
        else:
            values |= {"state": "queued"}
        # the same condition again: another worker may have renewed or re-queued it meanwhile
        result = session.execute(
            update(Job)
            .where(
                col(Job.id) == job_id, col(Job.state) == "running", col(Job.lease_expires_at) < now
            )
            .values(**values),
            execution_options=_NO_SYNC,
        )
        if _rowcount(result) != 1:
            continue
        if give_up:
            add_event(
                session=session,
                job_id=job_id,
                level="error",
                message=f"job failed: {values['error']}.",
            )
        else:
            requeued.append(job_id)
            add_event(
                session=session,
                job_id=job_id,
                level="warning",
                message="The worker stopped answering; the job is queued again and will resume "
                "from its last checkpoint.",
            )
    return requeued


def record_progress(
    *, session: Session, job_id: int, step: int | None, total_steps: int | None
) -> None:
    """How far the job's training got (read back as ``Job.progress``). Only these two columns are
    written, so a concurrent state change (a cancel) is never overwritten."""
    session.execute(
        update(Job)
        .where(col(Job.id) == job_id)
        .values(progress_step=_whole(step), progress_total_steps=_whole(total_steps)),
        execution_options=_NO_SYNC,
    )


def _whole(value: Any) -> int | None:
    """A step count from an event as an int; anything that is not a number as unknown."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def add_event(
    *,
    session: Session,
    job_id: int,
    level: str,
    message: str,
    metrics: dict[str, Any] | None = None,
) -> JobEvent:
    """One line in the job's event log (``level``: info | warning | error)."""
    row = JobEvent(job_id=job_id, level=level, message=message, metrics=metrics or {})
    session.add(row)
    session.flush()
    return row


def list_events(
    *, session: Session, job_id: int, limit: int = 200, after_id: int = 0
) -> list[JobEvent]:
    """The job's events in order; ``after_id`` pages on from the last one seen."""
    query = (
        select(JobEvent)
        .where(JobEvent.job_id == job_id, col(JobEvent.id) > after_id)
        .order_by(col(JobEvent.id))
        .limit(limit)
    )
    return list(session.exec(query).all())
