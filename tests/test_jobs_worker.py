"""The worker on SQLite and PostgreSQL with the stand-in training program in real subprocesses:
success with events stored, failure sentences, cancelling a running job, and a worker killed with
SIGKILL whose job is re-queued when its lease expires and resumed from its checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from sqlmodel import select

from engine.jobs.runners import LocalRunner
from engine.jobs.worker import Worker
from storage import jobs as q
from storage.db import session_scope
from storage.models import JobEvent, StepProgress
from tests.jobs_support import STANDIN, invocations, make_snapshot, wait_until

ROOT = Path(__file__).resolve().parents[1]


class Recorder:
    """A JobObserver that remembers what it was told."""

    def __init__(self) -> None:
        self.states: list[str] = []
        self.events: list[dict] = []
        self.finished: list[tuple[int, str, str]] = []

    def on_state(self, job) -> None:  # noqa: ANN001
        self.states.append(job.state)

    def on_event(self, job, event) -> None:  # noqa: ANN001
        self.events.append(event)

    def on_finished(self, job) -> None:  # noqa: ANN001
        self.finished.append((job.id, job.state, job.error))


def queue_job(db, tmp_path, **config) -> int:
    snapshot_id = make_snapshot(db, tmp_path / "snapshot")
    with session_scope(db) as s:
        job, _ = q.create_job(session=s, state="queued", snapshot_id=snapshot_id, config=config)
        return job.id


def worker(db, tmp_path, name="w1", **kw) -> Worker:
    kw.setdefault("poll_seconds", 0.2)
    return Worker(db, tmp_path / "home", LocalRunner(module=STANDIN, grace_s=10), name, **kw)


def stored(db, job_id):
    with session_scope(db) as s:
        return q.get_job(session=s, job_id=job_id), q.list_events(session=s, job_id=job_id)


def test_a_job_runs_to_success_with_its_events_stored(db, tmp_path):
    job_id = queue_job(db, tmp_path, total_steps=4, save_steps=2)
    recorder = Recorder()
    w = worker(db, tmp_path, observer=recorder)
    assert w.run_once()
    assert not w.run_once()  # nothing else queued

    job, events = stored(db, job_id)
    assert (job.state, job.attempts, job.error, job.lease_owner) == ("succeeded", 1, "", None)
    assert job.started_at <= job.finished_at
    run_dir = Path(job.run_dir)
    assert run_dir == tmp_path / "home" / "runs" / f"job-{job_id}"
    assert json.loads((run_dir / "config.json").read_text()) == {"total_steps": 4, "save_steps": 2}
    assert (run_dir / "data" / "validation.jsonl").read_text() == (
        tmp_path / "snapshot" / "validation.jsonl"
    ).read_text()
    assert job.progress == StepProgress(step=4, total_steps=4)
    assert "_progress" not in job.config  # progress is not a training setting
    # one row per event, in order, with the event's numbers
    messages = [e.message for e in events]
    assert messages[0].startswith("attempt 1 started on w1")
    assert [m for m in messages if m in ("start", "step", "eval", "checkpoint", "done")] == [
        "start",
        "step",
        "step",
        "eval",
        "checkpoint",
        "step",
        "step",
        "eval",
        "checkpoint",
        "done",
    ]
    steps = [e.metrics for e in events if e.message == "step"]
    assert [m["step"] for m in steps] == [1, 2, 3, 4] and all(m["loss"] > 0 for m in steps)
    assert any(
        e.level == "debug" and "warming up" in e.message for e in events
    )  # the non-JSON line
    assert messages[-1] == "job succeeded"
    # the observer saw the claim, every event, and the end once
    assert recorder.states == ["running"]
    assert [e["event"] for e in recorder.events if e["event"] != "log"][-1] == "done"
    assert recorder.finished == [(job_id, "succeeded", "")]
    assert [i["resume"] for i in invocations(run_dir)] == [False]


def test_failures_are_recorded_as_sentences(db, tmp_path):
    nan = queue_job(db, tmp_path, total_steps=5, fail_at_step=3)
    with session_scope(db) as s:
        crash, _ = q.create_job(
            session=s,
            state="queued",
            config={"total_steps": 5, "crash_at_step": 2},
            snapshot_id=q.get_job(session=s, job_id=nan).snapshot_id,
        )
        gone, _ = q.create_job(session=s, state="queued", config={}, snapshot_id=None)
    recorder = Recorder()
    w = worker(db, tmp_path, observer=recorder)
    assert w.run_once() and w.run_once() and w.run_once()

    job, events = stored(db, nan)  # the program's own error event gives the reason
    assert (job.state, job.error) == ("failed", "the loss became NaN at step 3.")
    assert [e.message for e in events if e.level == "error"] == [
        "the loss became NaN at step 3",
        "job failed: the loss became NaN at step 3.",
    ]
    job, _ = stored(db, crash.id)  # no error event: the last line of stderr says why
    assert job.state == "failed"
    assert job.error == "the training program failed: RuntimeError: stand-in crashed at step 2."
    job, _ = stored(db, gone.id)  # no data at all: the program refuses it (exit 2)
    assert job.state == "failed" and job.error.startswith("bad config or data:")
    assert [state for _, state, _ in recorder.finished] == ["failed", "failed", "failed"]


def test_a_job_whose_snapshot_folder_vanished_fails_without_running(db, tmp_path):
    job_id = queue_job(db, tmp_path, total_steps=3)
    for split in ("train", "validation", "test"):
        (tmp_path / "snapshot" / f"{split}.jsonl").unlink()
    assert worker(db, tmp_path).run_once()
    job, _ = stored(db, job_id)
    assert job.state == "failed"
    assert job.error.startswith("its run folder could not be prepared: dataset snapshot #")
    assert invocations(tmp_path / "home" / "runs" / f"job-{job_id}") == []


def test_cancelling_a_running_job_stops_its_program(db, tmp_path):
    hold = tmp_path / "never-created"
    job_id = queue_job(
        db, tmp_path, total_steps=10, save_steps=100, hold_after_step=2, wait_for_file=str(hold)
    )
    recorder = Recorder()
    w = worker(db, tmp_path, observer=recorder, lease_seconds=30)
    thread = threading.Thread(target=w.run_once)
    thread.start()
    try:

        def reached_step_2():
            with session_scope(db) as s:
                return s.exec(
                    select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.message == "step")
                ).all()[1:]

        wait_until(reached_step_2, 30, "step 2 of the running job")
        with session_scope(db) as s:
            q.request_cancel(session=s, job=q.get_job(session=s, job_id=job_id))
        thread.join(timeout=15)  # the watch thread polls every 0.2 s; the program stops on SIGTERM
        assert not thread.is_alive(), "the worker did not stop the cancelled job"
    finally:
        hold.touch()
        thread.join(timeout=30)
    job, events = stored(db, job_id)
    assert (job.state, job.error) == ("cancelled", "cancelled by an admin")
    # the program heard SIGTERM, saved where it was and said so; nothing overwrote the cancel
    assert any(e.message == "cancelled at step 2; the last checkpoint is kept" for e in events)
    assert (Path(job.run_dir) / "checkpoints" / "checkpoint-2" / "state.json").is_file()
    assert events[-1].message.startswith("job cancelled")
    assert recorder.finished == [(job_id, "cancelled", "cancelled by an admin")]
    pid = invocations(Path(job.run_dir))[0]["pid"]
    assert not _alive(pid)


def test_a_killed_workers_job_is_requeued_and_resumed_from_its_checkpoint(db_url, db, tmp_path):
    hold = tmp_path / "hold"
    job_id = queue_job(
        db, tmp_path, total_steps=8, save_steps=2, hold_after_step=4, wait_for_file=str(hold)
    )
    home = tmp_path / "home"
    # the first worker is its own process, so that it can be killed for real
    script = (
        "import sys\n"
        "from engine.jobs.runners import LocalRunner\n"
        "from engine.jobs.worker import Worker\n"
        "from storage.db import make_engine\n"
        f"Worker(make_engine({db_url!r}), {str(home)!r}, LocalRunner(module={STANDIN!r}), "
        "'doomed',\n"
        "       lease_seconds=2, poll_seconds=0.2).run_once()\n"
    )
    doomed = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:

        def checkpoint_4():
            with session_scope(db) as s:
                rows = s.exec(
                    select(JobEvent).where(
                        JobEvent.job_id == job_id, JobEvent.message == "checkpoint"
                    )
                ).all()
                return any(r.metrics.get("step") == 4 for r in rows)

        wait_until(checkpoint_4, 60, "the first worker's checkpoint at step 4")
    finally:
        doomed.send_signal(signal.SIGKILL)  # only the worker: its training child must die with it
        doomed.wait(timeout=30)
    run_dir = home / "runs" / f"job-{job_id}"
    first_pid = invocations(run_dir)[0]["pid"]
    try:
        wait_until(
            lambda: not _alive(first_pid),
            10,
            "the orphaned training program to die with its worker",
        )
    finally:
        hold.touch()  # (if it lives on, let it finish rather than linger)
    with session_scope(db) as s:
        assert q.get_job(session=s, job_id=job_id).state == "running"  # nobody knows yet

    recorder = Recorder()
    rescuer = worker(db, tmp_path, name="rescuer", observer=recorder, lease_seconds=30)
    wait_until(rescuer.run_once, 20, "the expired lease to be re-queued and claimed", interval=0.5)
    job, events = stored(db, job_id)
    assert (job.state, job.attempts) == ("succeeded", 2)
    start = next(e for e in recorder.events if e["event"] == "start")
    assert start["resumed_from"] == 4
    assert [e["step"] for e in recorder.events if e["event"] == "step"] == [5, 6, 7, 8]
    assert [i["resume"] for i in invocations(run_dir)] == [False, True]
    messages = [e.message for e in events]
    requeued = next(i for i, m in enumerate(messages) if "queued again" in m)
    assert (
        messages[requeued + 1].startswith("attempt 2 started on rescuer")
        and "resuming" in messages[requeued + 1]
    )
    assert messages.count("done") == 1 and messages[-1] == "job succeeded"
    assert recorder.finished == [(job_id, "succeeded", "")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
