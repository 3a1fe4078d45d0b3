"""The job queue in storage/jobs.py on real SQLite and PostgreSQL: the atomic claim, transitions
as compare-and-set, idempotent creation, leases and re-queueing, events."""

from __future__ import annotations

import itertools
import threading
from datetime import timedelta

import pytest
from sqlmodel import Session, select

from storage import jobs as q
from storage.db import session_scope
from storage.models import Job, utcnow

STATES = ("validating", "queued", "running", "succeeded", "failed", "cancelled")
# written out from the design, not read from storage.jobs, so the test can disagree with the code
ALLOWED = {
    ("validating", "queued"),
    ("validating", "failed"),
    ("validating", "cancelled"),
    ("queued", "running"),
    ("queued", "cancelled"),
    ("queued", "failed"),
    ("running", "succeeded"),
    ("running", "failed"),
    ("running", "cancelled"),
    ("running", "queued"),
}


def queue(db, n=1, state="queued"):
    with session_scope(db) as s:
        return [q.create_job(session=s, state=state, config={"n": i})[0].id for i in range(n)]


def test_racing_workers_claim_every_job_exactly_once(db):
    ids = queue(db, 20)
    claims: list[tuple[str, int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def claimer(name: str) -> None:
        try:
            barrier.wait()
            while True:
                with session_scope(db) as s:
                    job = q.claim_next_job(session=s, worker_id=name, lease_seconds=60)
                    if job is None:
                        return
                    claims.append((name, job.id))
                    # "run" it: another write in the same unit of work widens the race window
                    q.add_event(
                        session=s, job_id=job.id, level="info", message=f"claimed by {name}"
                    )
        except BaseException as exc:  # noqa: BLE001 — surfaced below: no retrying hides a failure
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert sorted(job_id for _, job_id in claims) == ids  # every job once, none twice
    with session_scope(db) as s:
        rows = {r.id: r for r in s.exec(select(Job)).all()}
        for name, job_id in claims:
            assert rows[job_id].state == "running" and rows[job_id].attempts == 1
            assert rows[job_id].lease_owner == name and rows[job_id].lease_expires_at > utcnow()
            assert [e.message for e in q.list_events(session=s, job_id=job_id)] == [
                f"claimed by {name}"
            ]


def test_claims_take_the_oldest_queued_job_first(db):
    first, second, third = queue(db, 3)
    (validating,) = queue(db, 1, state="validating")
    with session_scope(db) as s:
        got = [q.claim_next_job(session=s, worker_id="w", lease_seconds=5) for _ in range(4)]
    assert [j.id if j else None for j in got] == [first, second, third, None]
    with session_scope(db) as s:
        assert q.get_job(session=s, job_id=validating).state == "validating"
        assert got[0].started_at is not None


def test_a_claim_in_progress_does_not_block_another_worker_on_postgresql(db, db_url):
    if not db_url.startswith("postgresql"):
        pytest.skip(
            "SQLite has one writer at a time: a second claimer waits for the first to commit"
        )
    first, second = queue(db, 2)
    with Session(db) as a, Session(db) as b:
        job_a = q.claim_next_job(
            session=a, worker_id="a", lease_seconds=60
        )  # row locked, not committed
        b.connection().exec_driver_sql(
            "SET LOCAL lock_timeout = '2s'"
        )  # a blocked claim would fail
        job_b = q.claim_next_job(session=b, worker_id="b", lease_seconds=60)
        assert (job_a.id, job_b.id) == (first, second)
        a.commit()
        b.commit()


def test_only_the_designed_transitions_are_allowed(db):
    pairs = list(itertools.product(STATES, STATES))
    with session_scope(db) as s:  # one job per (from, to) pair, all in one database
        ids = {pair: q.create_job(session=s, state=pair[0])[0].id for pair in pairs}
    for (start, target), job_id in ids.items():
        with session_scope(db) as s:
            job = q.get_job(session=s, job_id=job_id)
            if (start, target) in ALLOWED:
                q.set_state(session=s, job=job, state=target)
            else:
                with pytest.raises(
                    q.TransitionError, match=f"is {start} and cannot become {target}"
                ):
                    q.set_state(session=s, job=job, state=target)
    with session_scope(db) as s:
        for (start, target), job_id in ids.items():
            job = q.get_job(session=s, job_id=job_id)
            moved = (start, target) in ALLOWED
            assert job.state == (target if moved else start), (start, target)
            if moved:
                assert (job.finished_at is not None) == (
                    target in {"succeeded", "failed", "cancelled"}
                )
                assert (job.started_at is not None) == (target == "running")


def test_a_finished_job_does_not_overwrite_a_concurrent_cancel(db):
    (job_id,) = queue(db)
    with session_scope(db) as s:
        q.claim_next_job(session=s, worker_id="w", lease_seconds=60)
    with Session(db, expire_on_commit=False) as worker, Session(db) as admin:
        seen_by_worker = q.get_job(session=worker, job_id=job_id)
        assert seen_by_worker.state == "running"
        # end the read: on PostgreSQL and SQLite the worker would see the cancel next
        worker.commit()
        q.request_cancel(session=admin, job=q.get_job(session=admin, job_id=job_id))
        admin.commit()
        worker.add(seen_by_worker)  # the worker still believes the job is running
        with pytest.raises(q.TransitionError, match="was running but is now cancelled"):
            q.set_state(session=worker, job=seen_by_worker, state="succeeded")
        worker.commit()
    with session_scope(db) as s:
        job = q.get_job(session=s, job_id=job_id)
        assert job.state == "cancelled" and job.error == "cancelled by an admin"
        with pytest.raises(q.TransitionError, match="already cancelled"):
            q.request_cancel(session=s, job=job)


def test_the_same_request_never_makes_two_jobs(db):
    with session_scope(db) as s:
        job, created = q.create_job(session=s, request_key="slack:trigger-1", state="validating")
        again, created_again = q.create_job(
            session=s, request_key="slack:trigger-1", state="validating"
        )
        other, created_other = q.create_job(
            session=s, request_key="slack:trigger-2", state="validating"
        )
    assert created and not created_again and again.id == job.id
    assert created_other and other.id != job.id

    # a retried Slack request arriving on two threads at once: the unique key settles it
    barrier, results = threading.Barrier(4), []

    def submit() -> None:
        barrier.wait()
        with session_scope(db) as s:
            results.append(q.create_job(session=s, request_key="slack:retried", state="queued"))

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 4 and len({job.id for job, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    with session_scope(db) as s:
        assert len(s.exec(select(Job).where(Job.request_key == "slack:retried")).all()) == 1


def test_an_expired_lease_is_requeued_and_the_old_worker_loses_it(db):
    (job_id,) = queue(db)
    with session_scope(db) as s:
        q.claim_next_job(session=s, worker_id="old", lease_seconds=60)
        assert q.renew_lease(session=s, job_id=job_id, worker_id="old", lease_seconds=60)
        assert not q.renew_lease(session=s, job_id=job_id, worker_id="stranger", lease_seconds=60)
        assert q.requeue_expired(session=s) == []  # still leased
    with session_scope(db) as s:
        assert q.requeue_expired(session=s, now=utcnow() + timedelta(seconds=120)) == [job_id]
    with session_scope(db) as s:
        job = q.get_job(session=s, job_id=job_id)
        assert (job.state, job.lease_owner, job.lease_expires_at) == ("queued", None, None)
        assert not q.renew_lease(session=s, job_id=job_id, worker_id="old", lease_seconds=60)
        job = q.claim_next_job(session=s, worker_id="new", lease_seconds=60)
        assert (job.id, job.attempts, job.lease_owner) == (job_id, 2, "new")
        events = q.list_events(session=s, job_id=job_id)
        assert [e.level for e in events] == [
            "warning"
        ] and "resume from its last checkpoint" in events[0].message


def test_a_job_that_keeps_losing_its_worker_is_given_up(db):
    (job_id,) = queue(db)
    later = utcnow()
    for attempt in (1, 2, 3):
        later += timedelta(seconds=120)
        with session_scope(db) as s:
            job = q.claim_next_job(session=s, worker_id=f"w{attempt}", lease_seconds=60, now=later)
            assert job.attempts == attempt
        with session_scope(db) as s:
            requeued = q.requeue_expired(
                session=s, now=later + timedelta(seconds=61), max_attempts=3
            )
        assert requeued == ([job_id] if attempt < 3 else [])
    with session_scope(db) as s:
        job = q.get_job(session=s, job_id=job_id)
        assert job.state == "failed" and job.finished_at is not None
        assert job.error == "its worker stopped answering on each of 3 attempts, so it was given up"
        assert q.list_events(session=s, job_id=job_id)[-1].level == "error"


def test_events_are_kept_in_order_with_their_metrics(db):
    (job_id,) = queue(db)
    with session_scope(db) as s:
        for step in range(1, 6):
            q.add_event(
                session=s,
                job_id=job_id,
                level="info",
                message="step",
                metrics={"step": step, "loss": 1 / step},
            )
        q.add_event(session=s, job_id=job_id, level="error", message="the loss became NaN")
    with session_scope(db) as s:
        events = q.list_events(session=s, job_id=job_id)
        assert [e.metrics.get("step") for e in events] == [1, 2, 3, 4, 5, None]
        assert events[2].metrics["loss"] == pytest.approx(1 / 3)
        assert events[-1].level == "error" and events[-1].message == "the loss became NaN"
        later = q.list_events(session=s, job_id=job_id, after_id=events[3].id)
        assert [e.id for e in later] == [events[4].id, events[5].id]
        assert [j.id for j in q.list_jobs(session=s)] == [job_id]
        assert q.list_jobs(session=s, state="running") == []
