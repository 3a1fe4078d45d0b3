"""The job queue on SQLite and PostgreSQL, and the worker running the real training program."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from engine.jobs.runners import LocalRunner
from engine.jobs.worker import Worker
from storage import jobs as q
from storage.db import session_scope
from storage.models import DatasetSnapshot, Job, JobEvent, utcnow
from tests.train_support import pattern_examples, tiny_base_dir

ROOT = Path(__file__).resolve().parents[1]


def queue(db, n=1, **config):
    ids = []
    with session_scope(db) as s:
        for _ in range(n):
            job, _ = q.create_job(session=s, state="queued", config=config)
            ids.append(job.id)
    return ids


def test_racing_workers_claim_each_job_exactly_once(db):
    ids = queue(db, 20)
    claims: list[tuple[str, int]] = []
    barrier = threading.Barrier(4)

    def claimer(name):
        barrier.wait()
        while True:
            try:
                with session_scope(db) as s:
                    job = q.claim_next_job(session=s, worker_id=name, lease_seconds=60)
            except Exception:  # noqa: BLE001 — a serialisation conflict: try again
                continue
            if job is None:
                return
            claims.append((name, job.id))

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(j for _, j in claims) == ids
    with session_scope(db) as s:
        rows = s.exec(select(Job)).all()
        assert all(r.state == "running" and r.attempts == 1 for r in rows)
        assert {r.lease_owner for r in rows} == {name for name, _ in claims}


def test_oldest_first_transitions_and_idempotent_create(db):
    first, second = queue(db, 2)
    with session_scope(db) as s:
        assert q.claim_next_job(session=s, worker_id="w", lease_seconds=5).id == first
        job, created = q.create_job(session=s, request_key="slack:trigger-1", state="validating")
        again, created_again = q.create_job(
            session=s, request_key="slack:trigger-1", state="validating"
        )
        assert created and not created_again and again.id == job.id
        with pytest.raises(q.TransitionError, match="validating and cannot become succeeded"):
            q.set_state(session=s, job=job, state="succeeded")
        done = q.get_job(session=s, job_id=first)
        q.set_state(session=s, job=done, state="succeeded")
        with pytest.raises(q.TransitionError, match="already succeeded"):
            q.request_cancel(session=s, job=done)


def test_expired_lease_is_requeued_and_the_old_worker_loses_it(db):
    (job_id,) = queue(db)
    with session_scope(db) as s:
        q.claim_next_job(session=s, worker_id="old", lease_seconds=60)
        assert q.renew_lease(session=s, job_id=job_id, worker_id="old", lease_seconds=60)
        assert q.requeue_expired(session=s, now=utcnow()) == []
        assert q.requeue_expired(session=s, now=utcnow() + timedelta(seconds=120)) == [job_id]
    with session_scope(db) as s:
        assert not q.renew_lease(session=s, job_id=job_id, worker_id="old", lease_seconds=60)
        job = q.claim_next_job(session=s, worker_id="new", lease_seconds=60)
        assert job.id == job_id and job.attempts == 2
        assert any("queued again" in e.message for e in q.list_events(session=s, job_id=job_id))


# -- the worker with the real training program ---------------------------------------------------


def snapshot_with(db, tmp_path, n_train=12, n_val=4):
    import json

    folder = tmp_path / "snapshot"
    folder.mkdir()
    for name, rows in (
        ("train", pattern_examples(n_train)),
        ("validation", pattern_examples(n_val, n_train)),
        ("test", pattern_examples(2, n_train + n_val)),
    ):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with session_scope(db) as s:
        snap = DatasetSnapshot(
            content_hash=os.urandom(8).hex(),
            path=str(folder),
            counts={
                "train": n_train,
                "validation": n_val,
                "test": 2,
                "examples": n_train + n_val + 2,
            },
        )
        s.add(snap)
        s.flush()
        return snap.id


def tiny_config(**extra):
    return {
        "base_model": str(tiny_base_dir()),
        "method": "lora",
        "max_steps": 6,
        "max_length": 128,
        "eval_steps": 2,
        "save_steps": 2,
        "learning_rate": 3e-3,
        "lora_r": 4,
        "lora_alpha": 8,
        "precision": "fp32",
        **extra,
    }


class Recorder:
    def __init__(self):
        self.events, self.finished, self.states = [], [], []

    def on_state(self, job):
        self.states.append(job.state)

    def on_event(self, job, event):
        self.events.append(event)

    def on_finished(self, job):
        self.finished.append((job.id, job.state, job.error))


def test_worker_runs_a_job_to_success_and_records_events(db, tmp_path):
    snap = snapshot_with(db, tmp_path)
    with session_scope(db) as s:
        job, _ = q.create_job(session=s, state="queued", snapshot_id=snap, config=tiny_config())
    recorder = Recorder()
    worker = Worker(
        db, tmp_path / "home", LocalRunner(), worker_id="test-worker", observer=recorder
    )
    assert worker.run_once()
    assert not worker.run_once()  # nothing else queued
    assert recorder.finished == [(job.id, "succeeded", "")]
    kinds = [e["event"] for e in recorder.events]
    assert kinds[0] == "start" and kinds[-1] == "done" and "checkpoint" in kinds
    with session_scope(db) as s:
        row = q.get_job(session=s, job_id=job.id)
        assert row.state == "succeeded" and row.finished_at is not None
        assert (Path(row.run_dir) / "adapter" / "adapter_config.json").is_file()
        assert row.progress.total_steps == 6
        stored = s.exec(select(JobEvent.message).where(JobEvent.job_id == job.id)).all()
        assert "step" in stored and any("succeeded" in m for m in stored)


def test_a_bad_config_fails_the_job_with_a_sentence(db, tmp_path):
    snap = snapshot_with(db, tmp_path)
    with session_scope(db) as s:
        job, _ = q.create_job(
            session=s, state="queued", snapshot_id=snap, config=tiny_config(lora_r=4096)
        )
    recorder = Recorder()
    Worker(db, tmp_path / "home", LocalRunner(), observer=recorder).run_once()
    ((job_id, state, error),) = recorder.finished
    assert state == "failed" and "lora_r=4096" in error


def test_killed_worker_job_is_resumed_by_another_from_its_checkpoint(db_url, db, tmp_path):
    snap = snapshot_with(db, tmp_path)
    with session_scope(db) as s:
        job, _ = q.create_job(
            session=s, state="queued", snapshot_id=snap, config=tiny_config(max_steps=8)
        )
    home = tmp_path / "home"
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "THREADTUNE_HOME": str(home),
        "SLACK_BOT_TOKEN": "",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "bot", "worker", "--once", "--lease", "3"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            with session_scope(db) as s:
                if s.exec(
                    select(JobEvent).where(
                        JobEvent.job_id == job.id, JobEvent.message == "checkpoint"
                    )
                ).first():
                    break
            time.sleep(0.2)
        else:
            pytest.fail("the first worker never wrote a checkpoint")
    finally:
        os.killpg(worker.pid, signal.SIGKILL)  # the worker dies; its training child follows it
        worker.wait()
    time.sleep(4)  # let the 3-second lease run out
    recorder = Recorder()
    assert Worker(db, home, LocalRunner(), worker_id="rescuer", observer=recorder).run_once()
    start = next(e for e in recorder.events if e["event"] == "start")
    assert start["resumed_from"] and start["resumed_from"] >= 2
    assert recorder.finished[0][1] == "succeeded"
    with session_scope(db) as s:
        row = q.get_job(session=s, job_id=job.id)
        assert row.attempts == 2 and row.state == "succeeded"
