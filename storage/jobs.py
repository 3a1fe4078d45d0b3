"""Queries for training jobs: creation, the atomic claim, leases, transitions and events."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from storage.models import Job, JobEvent, utcnow

TERMINAL = {"succeeded", "failed", "cancelled"}
TRANSITIONS = {
    "validating": {"queued", "failed", "cancelled"},
    "queued": {"running", "cancelled", "failed"},
    "running": {"succeeded", "failed", "cancelled", "queued"},  # queued: lease expired, retried
}


class TransitionError(ValueError):
    """A job cannot move from its state to the one asked for."""


def create_job(*, session: Session, request_key: str | None = None, **fields: Any) -> tuple[Job, bool]:
    """A new job, or the existing one for ``request_key`` (the same request never makes two)."""
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
        existing = session.exec(select(Job).where(Job.request_key == request_key)).first()
        assert existing is not None
        return existing, False
    return job, True


def get_job(*, session: Session, job_id: int) -> Job | None:
    return session.get(Job, job_id)


def list_jobs(*, session: Session, limit: int = 20) -> list[Job]:
    return list(session.exec(select(Job).order_by(Job.id.desc()).limit(limit)).all())


def set_state(*, session: Session, job: Job, state: str, error: str = "") -> Job:
    if state not in TRANSITIONS.get(job.state, set()):
        raise TransitionError(f"job {job.id} is {job.state} and cannot become {state}")
    job.state = state
    if error:
        job.error = error
    if state == "running" and job.started_at is None:
        job.started_at = utcnow()
    if state in TERMINAL:
        job.finished_at = utcnow()
        job.lease_owner = None
        job.lease_expires_at = None
    session.add(job)
    session.flush()
    return job


def claim_next_job(*, session: Session, worker_id: str, lease_seconds: int, now: datetime | None = None) -> Job | None:
    """Claim the oldest queued job for ``worker_id``; None when there is none.

    A conditional UPDATE (``WHERE state = 'queued'``) makes the claim atomic on SQLite and
    PostgreSQL alike: of two workers racing for a row, only one sees a row count of 1.
    """
    now = now or utcnow()
    candidates = session.exec(select(Job.id).where(Job.state == "queued").order_by(Job.id).limit(5)).all()
    for job_id in candidates:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == "queued")
            .values(state="running", lease_owner=worker_id, lease_expires_at=now + timedelta(seconds=lease_seconds),
                    attempts=Job.attempts + 1)
        , execution_options={"synchronize_session": False})
        if result.rowcount == 1:
            session.flush()
            job = session.get(Job, job_id)
            session.refresh(job)
            if job.started_at is None:
                job.started_at = now
                session.add(job)
            return job
    return None


def renew_lease(*, session: Session, job_id: int, worker_id: str, lease_seconds: int) -> bool:
    """Extend the lease; False when this worker no longer holds the job (expired, cancelled)."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == worker_id, Job.state == "running")
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds)),
        execution_options={"synchronize_session": False},
    )
    return result.rowcount == 1


def requeue_expired(*, session: Session, now: datetime | None = None) -> list[int]:
    """Running jobs whose worker stopped renewing go back to the queue (they resume)."""
    now = now or utcnow()
    rows = session.exec(select(Job).where(Job.state == "running", Job.lease_expires_at < now)).all()
    requeued = []
    for job in rows:
        result = session.execute(
            update(Job).where(Job.id == job.id, Job.state == "running", Job.lease_expires_at < now)
            .values(state="queued", lease_owner=None, lease_expires_at=None),
            execution_options={"synchronize_session": False},
        )
        if result.rowcount == 1:
            requeued.append(job.id)
            add_event(session=session, job_id=job.id, level="warning",
                      message="The worker stopped answering; the job is queued again and will resume from its last checkpoint.")
    return requeued


def request_cancel(*, session: Session, job: Job) -> Job:
    """Cancel a job that has not finished; a running one is stopped by its worker."""
    if job.state in TERMINAL:
        raise TransitionError(f"job {job.id} already {job.state}")
    return set_state(session=session, job=job, state="cancelled", error="cancelled by an admin")


def add_event(*, session: Session, job_id: int, level: str, message: str, metrics: dict | None = None) -> JobEvent:
    row = JobEvent(job_id=job_id, level=level, message=message, metrics=metrics or {})
    session.add(row)
    session.flush()
    return row


def list_events(*, session: Session, job_id: int, limit: int = 200) -> list[JobEvent]:
    return list(session.exec(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id).limit(limit)).all())
