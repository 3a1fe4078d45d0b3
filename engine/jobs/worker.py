"""The worker: claims the oldest queued job, runs it through a runner, records its events,
renews its lease, honours cancellation, and leaves a job that can always be resumed.

One job at a time per worker; run several workers (processes or machines) for more. Each
attempt runs in ``HOME/runs/job-<id>/``, kept across attempts: when a worker dies its lease runs
out, the next worker re-queues the job, and whoever claims it resumes from the last checkpoint.

Retention (:mod:`engine.retention`) runs here too: with an encryption key a failed or cancelled
job's folder is sealed the moment the job ends (and unsealed if it is claimed again), and between
jobs the worker sweeps run folders, ``/ask`` audit rows and A/B battle text past their retention.
The sweep lives in the worker, not the bot's scheduler, because the worker is the process that
writes run folders, on the machine (or shared folder) that holds them — ``serve`` may run
elsewhere — and between two jobs it has nothing else to do.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.engine import Engine
from sqlmodel import Session

from engine.jobs.progress import Throttle
from engine.jobs.runners import RunHandle, Runner
from engine.retention import RetentionPolicy, seal_run, sweep, unseal_run
from storage import jobs as q
from storage.db import session_scope
from storage.models import DatasetSnapshot, Job

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
MAX_EVENT_TEXT = 2000


class JobObserver(Protocol):
    """What shows a job's progress to people (the Slack bot implements it; kept free of Slack
    here). Called on the worker's thread; an exception is logged and never fails the job."""

    def on_state(self, job: Job) -> None:
        """The job changed state (claimed and running, or re-queued)."""
        ...

    def on_event(self, job: Job, event: dict[str, Any]) -> None:
        """One event of the training program (``start``, ``step``, ``eval``, ``checkpoint``,
        ``done``, ``error``, ``log``). Throttling updates is the observer's business."""
        ...

    def on_finished(self, job: Job) -> None:
        """The job reached succeeded, failed (``job.error`` says why) or cancelled."""
        ...


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_dir_of(home: Path, job: Job) -> Path:
    return Path(home) / "runs" / f"job-{job.id}"


def prepare_run_dir(home: Path, job: Job, snapshot: DatasetSnapshot | None) -> Path:
    """``home/runs/job-<id>/`` with ``config.json`` and ``data/`` copied from the dataset
    snapshot; kept across attempts (the data is copied once, so a resumed run sees the same)."""
    run_dir = run_dir_of(home, job)
    data = run_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(job.config or {}, indent=2))
    if snapshot is not None:
        folder = Path(snapshot.path)
        for split in ("train", "validation"):
            if not (folder / f"{split}.jsonl").is_file():
                raise FileNotFoundError(
                    f"dataset snapshot #{snapshot.id} has no {split}.jsonl in {folder}"
                )
        for split in SPLITS:
            source, target = folder / f"{split}.jsonl", data / f"{split}.jsonl"
            if source.is_file() and not target.exists():
                shutil.copyfile(source, target.with_suffix(".part"))
                target.with_suffix(".part").replace(target)  # never a half-copied split
    return run_dir


def has_checkpoint(run_dir: Path) -> bool:
    return any((Path(run_dir) / "checkpoints").glob("checkpoint-*"))


class Worker:
    """Claims and runs jobs. ``db``: the SQLAlchemy engine; ``home``: THREADTUNE_HOME."""

    def __init__(
        self,
        db: Engine,
        home: Path,
        runner: Runner,
        worker_id: str | None = None,
        *,
        lease_seconds: float = 60,
        poll_seconds: float = 2.0,
        observer: JobObserver | None = None,
        max_attempts: int = 3,
        encryption_key: bytes | None = None,
        retention: RetentionPolicy | None = None,
        sweep_seconds: float = 3600.0,
    ):
        if lease_seconds <= 0 or poll_seconds <= 0:
            raise ValueError("lease_seconds and poll_seconds must be positive")
        self.db = db
        self.home = Path(home)
        self.runner = runner
        self.worker_id = worker_id or default_worker_id()
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.observer = observer
        self.max_attempts = max_attempts
        self.encryption_key = encryption_key
        self.retention = retention  # None: no sweep (tests, `--once` runs)
        self.sweep_seconds = sweep_seconds
        self._next_sweep = 0.0

    def run_forever(self, stop: threading.Event) -> None:
        """Run jobs until ``stop`` is set (checked between jobs; a running job finishes first)."""
        log.info("worker %s polling for jobs (runner: %s)", self.worker_id, self.runner.name)
        while not stop.is_set():
            self.sweep_if_due()
            try:
                ran = self.run_once()
            except Exception:  # noqa: BLE001 — one bad job (or a database hiccup) must not stop the worker
                log.exception("worker loop error")
                ran = False
            if not ran:
                stop.wait(self.poll_seconds)

    def sweep_if_due(self) -> None:
        """Apply the retention policy once every ``sweep_seconds`` (never while a job runs here)."""
        if self.retention is None or time.monotonic() < self._next_sweep:
            return
        self._next_sweep = time.monotonic() + self.sweep_seconds
        try:
            sweep(self.db, self.retention, key=self.encryption_key)
        except Exception:  # noqa: BLE001 — housekeeping must not stop the worker
            log.exception("retention sweep failed")

    def run_once(self) -> bool:
        """Re-queue jobs whose worker died, then run the oldest queued job if there is one.
        True when a job was claimed."""
        with session_scope(self.db) as session:
            for job_id in q.requeue_expired(session=session, max_attempts=self.max_attempts):
                log.warning("job %s lost its worker; queued again", job_id)
            job = q.claim_next_job(
                session=session, worker_id=self.worker_id, lease_seconds=self.lease_seconds
            )
        if job is None:
            return False
        log.info("worker %s claimed job %s (attempt %s)", self.worker_id, job.id, job.attempts)
        self._notify("on_state", job)
        try:
            run_dir, resume = self._prepare(job)
        except Exception as exc:  # noqa: BLE001 — the job fails with the reason, the worker goes on
            log.exception("could not prepare job %s", job.id)
            self._finish(job, None, error=f"its run folder could not be prepared: {exc}")
            return True
        self._run(job, run_dir, resume)
        return True

    # -- one attempt --------------------------------------------------------------------------

    def _prepare(self, job: Job) -> tuple[Path, bool]:
        with session_scope(self.db) as session:
            snapshot = session.get(DatasetSnapshot, job.snapshot_id) if job.snapshot_id else None
            if job.snapshot_id and snapshot is None:
                raise FileNotFoundError(f"dataset snapshot #{job.snapshot_id} no longer exists")
            if self.encryption_key is not None:  # a job claimed again after it was sealed
                unseal_run(run_dir_of(self.home, job), self.encryption_key)
            run_dir = prepare_run_dir(self.home, job, snapshot)
            resume = job.attempts > 1 or has_checkpoint(run_dir)
            row = _reread(session, job)
            row.run_dir = job.run_dir = str(run_dir)
            session.add(row)
            q.add_event(
                session=session,
                job_id=_job_id(job),
                level="info",
                message=(
                    f"attempt {job.attempts} started on {self.worker_id} ({self.runner.name} "
                    "runner)"
                )
                + (", resuming from the last checkpoint" if resume else ""),
                metrics={"attempt": job.attempts, "worker": self.worker_id, "resume": resume},
            )
        return run_dir, resume

    def _run(self, job: Job, run_dir: Path, resume: bool) -> None:
        try:
            handle = self.runner.start(run_dir, resume=resume)
        except Exception as exc:  # noqa: BLE001 — e.g. the Ray cluster cannot be reached
            log.exception("could not start job %s", job.id)
            self._finish(
                job,
                None,
                error=f"the {self.runner.name} runner could not start the training program: {exc}",
            )
            return
        finished = threading.Event()
        stopped_because: list[str] = []  # set by the watch thread: "cancelled" or "lost"

        def watch() -> None:
            """Renew the lease and notice cancellation, every poll (a third of the lease at
            most)."""
            tick = min(self.poll_seconds, self.lease_seconds / 3)
            while not finished.wait(tick):
                try:
                    with session_scope(self.db) as session:
                        held = q.renew_lease(
                            session=session,
                            job_id=_job_id(job),
                            worker_id=self.worker_id,
                            lease_seconds=self.lease_seconds,
                        )
                        state = None if held else _reread(session, job).state
                except Exception:  # noqa: BLE001 — a database blip: try again next tick, the lease has slack
                    log.exception("could not renew job %s's lease", job.id)
                    continue
                if not held:
                    stopped_because.append("cancelled" if state == "cancelled" else "lost")
                    log.warning(
                        "job %s is %s; stopping its training program",
                        job.id,
                        "cancelled" if state == "cancelled" else f"{state}, lease lost",
                    )
                    handle.cancel()
                    return

        watcher = threading.Thread(target=watch, name=f"job-{job.id}-lease", daemon=True)
        watcher.start()
        done: dict[str, Any] | None = None
        error = ""
        progress_throttle = Throttle(1.0)
        try:
            for event in handle.events():
                kind = event.get("event")
                if kind == "done":
                    done = event
                elif kind == "error":
                    error = str(event.get("message", "")).strip()
                self._record(job, event, progress_throttle)
                self._notify("on_event", job, event)
            code = handle.wait()
        except BaseException:
            handle.cancel()  # never leave the program running behind a crashed loop
            raise
        finally:
            finished.set()
            watcher.join(timeout=60)
        if stopped_because and stopped_because[0] == "lost":
            # another worker may already hold the job: leave its state alone
            with session_scope(self.db) as session:
                q.add_event(
                    session=session,
                    job_id=_job_id(job),
                    level="warning",
                    message=(
                        f"{self.worker_id} lost the job's lease and stopped its attempt "
                        f"{job.attempts}"
                    ),
                )
            return
        if code == 0 and done is not None:
            self._finish(job, handle, succeeded=True)
        else:
            self._finish(
                job,
                handle,
                error=error
                or _stderr_reason(handle)
                or f"the training program exited with code {code} without saying why",
            )

    def _finish(
        self, job: Job, handle: RunHandle | None, *, succeeded: bool = False, error: str = ""
    ) -> None:
        """Record the outcome unless the job moved meanwhile (cancelled, or re-queued after a lost
        lease); tell the observer."""
        with session_scope(self.db) as session:
            current = _reread(session, job)
            if current.state == "running" and current.lease_owner == self.worker_id:
                # cancelled between our read and our write: the cancel stands
                with contextlib.suppress(q.TransitionError):
                    q.set_state(
                        session=session,
                        job=current,
                        state="succeeded" if succeeded else "failed",
                        error="" if succeeded else _sentence(error),
                    )
            if current.state == "succeeded":
                q.add_event(
                    session=session, job_id=_job_id(job), level="info", message="job succeeded"
                )
            elif current.state == "failed":
                q.add_event(
                    session=session,
                    job_id=_job_id(job),
                    level="error",
                    message=f"job failed: {current.error}",
                )
            elif current.state == "cancelled":
                q.add_event(
                    session=session,
                    job_id=_job_id(job),
                    level="warning",
                    message=(
                        "job cancelled; the training program was stopped and its run folder kept"
                    ),
                )
        log.info("job %s %s", job.id, current.state)
        if current.state in ("failed", "cancelled") and current.run_dir:
            self._seal(current)
        if current.state in q.TERMINAL:
            self._notify("on_finished", current)
        else:
            self._notify("on_state", current)

    def _seal(self, job: Job) -> None:
        """With a key, a kept run folder holds nothing in clear once its job stopped."""
        if self.encryption_key is None:
            return
        try:
            sealed = seal_run(Path(job.run_dir), self.encryption_key)
        except OSError:
            log.exception("could not seal job %s's run folder", job.id)
            return
        if sealed:
            log.info("job %s's run folder sealed: %s", job.id, ", ".join(sealed))

    def _record(self, job: Job, event: dict[str, Any], progress_throttle: Throttle) -> None:
        """One event → one JobEvent row (message: the event's kind, or its text for errors and
        logs; metrics: its scalar fields), and the job's progress (step/total, ``Job.progress``)
        at most once a second, so that ``/tune jobs`` and the App Home show it without reading
        every event."""
        kind = str(event.get("event"))
        metrics = {
            k: v
            for k, v in event.items()
            if k != "event" and isinstance(v, int | float | str | bool | None)
        }
        if kind in ("error", "log"):
            message = str(event.get("message", ""))[:MAX_EVENT_TEXT]
            metrics.pop("message", None)
        else:
            message = kind
        level = {"error": "error", "log": "debug"}.get(kind, "info")
        with session_scope(self.db) as session:
            q.add_event(
                session=session, job_id=_job_id(job), level=level, message=message, metrics=metrics
            )
            # the first and the last always go through, so what is shown at the end is exact
            last = kind != "step" or event.get("step") == event.get("total_steps")
            if kind in ("start", "step", "done") and progress_throttle.ready(final=last):
                before = _reread(session, job).progress
                total = event.get("total_steps") or before.total_steps
                step = {"start": event.get("resumed_from") or 0, "step": event.get("step", 0)}.get(
                    kind, total
                )
                q.record_progress(
                    session=session, job_id=_job_id(job), step=step, total_steps=total
                )

    def _notify(self, method: str, *args: Any) -> None:
        if self.observer is None:
            return
        try:
            getattr(self.observer, method)(*args)
        except Exception:  # noqa: BLE001 — Slack trouble must not fail training
            log.exception("job observer %s failed", method)


def _job_id(job: Job) -> int:
    """The id of a job read from the database (only a job not inserted yet lacks one)."""
    assert job.id is not None
    return job.id


def _reread(session: Session, job: Job) -> Job:
    """``job``'s row as it is now (jobs are never deleted)."""
    row = q.get_job(session=session, job_id=_job_id(job))
    assert row is not None
    return row


def _sentence(text: str) -> str:
    text = " ".join(text.split())[:MAX_EVENT_TEXT]
    return text if not text or text[-1] in ".!?" else text + "."


def _stderr_reason(handle: RunHandle) -> str:
    """The last meaningful stderr line (a traceback's last line names the exception)."""
    lines = [line.strip() for line in handle.stderr_tail().splitlines() if line.strip()]
    return f"the training program failed: {lines[-1][:300]}" if lines else ""
