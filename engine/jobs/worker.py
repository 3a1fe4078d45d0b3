"""The worker: claims the oldest queued job, runs it through a runner, records its events,
renews its lease, and leaves a job that can always be resumed."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.engine import Engine

from engine.jobs.runners import Runner
from storage import jobs as q
from storage.db import session_scope
from storage.models import DatasetSnapshot, Job

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


class JobObserver(Protocol):
    """What the bot implements to show a job's progress (kept free of Slack here)."""

    def on_state(self, job: Job) -> None: ...
    def on_event(self, job: Job, event: dict[str, Any]) -> None: ...
    def on_finished(self, job: Job) -> None: ...


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def prepare_run_dir(home: Path, job: Job, snapshot: DatasetSnapshot | None) -> Path:
    """``home/runs/job-<id>/`` with config.json and the snapshot's splits; kept across attempts."""
    run_dir = Path(home) / "runs" / f"job-{job.id}"
    data = run_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in (job.config or {}).items() if not k.startswith("_")}
    (run_dir / "config.json").write_text(json.dumps(config, indent=2))
    if snapshot is not None:
        for split in SPLITS:
            source = Path(snapshot.path) / f"{split}.jsonl"
            if source.is_file() and not (data / f"{split}.jsonl").exists():
                shutil.copyfile(source, data / f"{split}.jsonl")
    return run_dir


class Worker:
    def __init__(self, db: Engine, home: Path, runner: Runner, *, worker_id: str | None = None,
                 lease_seconds: int = 60, poll_seconds: float = 2.0, observer: JobObserver | None = None):
        self.db = db
        self.home = Path(home)
        self.runner = runner
        self.worker_id = worker_id or default_worker_id()
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.observer = observer

    def run_forever(self, stop: threading.Event) -> None:
        log.info("worker %s polling for jobs (runner: %s)", self.worker_id, self.runner.name)
        while not stop.is_set():
            try:
                ran = self.run_once()
            except Exception:  # noqa: BLE001 — one bad job must not stop the worker
                log.exception("worker loop error")
                ran = False
            if not ran:
                stop.wait(self.poll_seconds)

    def run_once(self) -> bool:
        """Run one job if one is queued; True when a job was run."""
        with session_scope(self.db) as session:
            for job_id in q.requeue_expired(session=session):
                log.warning("job %s lost its worker; queued again", job_id)
            job = q.claim_next_job(session=session, worker_id=self.worker_id, lease_seconds=self.lease_seconds)
            if job is None:
                return False
            snapshot = session.get(DatasetSnapshot, job.snapshot_id) if job.snapshot_id else None
            run_dir = prepare_run_dir(self.home, job, snapshot)
            job.run_dir = str(run_dir)
            session.add(job)
            resume = job.attempts > 1 or any((run_dir / "checkpoints").glob("checkpoint-*"))
            q.add_event(session=session, job_id=job.id, level="info",
                        message=f"attempt {job.attempts} started on {self.worker_id}"
                        + (" (resuming from the last checkpoint)" if resume else ""))
        self._notify("on_state", job)
        self._run(job, run_dir, resume)
        return True

    def _run(self, job: Job, run_dir: Path, resume: bool) -> None:
        handle = self.runner.start(run_dir, resume=resume)
        lost = threading.Event()
        finished = threading.Event()

        def heartbeat() -> None:
            while not finished.wait(max(1.0, self.lease_seconds / 3)):
                with session_scope(self.db) as session:
                    held = q.renew_lease(session=session, job_id=job.id, worker_id=self.worker_id,
                                         lease_seconds=self.lease_seconds)
                if not held:
                    lost.set()
                    handle.cancel()
                    return

        beat = threading.Thread(target=heartbeat, name=f"lease-{job.id}", daemon=True)
        beat.start()
        done: dict[str, Any] | None = None
        error = ""
        try:
            for event in handle.events():
                kind = event.get("event")
                if kind == "done":
                    done = event
                if kind == "error":
                    error = str(event.get("message", ""))
                self._record(job, event)
                self._notify("on_event", job, event)
            code = handle.wait()
        finally:
            finished.set()
            beat.join(timeout=5)
        with session_scope(self.db) as session:
            current = q.get_job(session=session, job_id=job.id)
            if current.state != "running" or current.lease_owner != self.worker_id:
                log.info("job %s is %s; this worker lets it go", job.id, current.state)
                final = current
            elif code == 0 and done is not None:
                final = q.set_state(session=session, job=current, state="succeeded")
            else:
                reason = error or _stderr_reason(handle) or f"the training program exited with code {code}"
                final = q.set_state(session=session, job=current, state="failed", error=reason)
            q.add_event(session=session, job_id=job.id, level="info" if final.state == "succeeded" else "error",
                        message=f"job {final.state}" + (f": {final.error}" if final.error and final.state != "succeeded" else ""))
        self._notify("on_finished", final)

    def _record(self, job: Job, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "log":
            return
        metrics = {k: v for k, v in event.items() if k != "event" and isinstance(v, int | float | str | None)}
        level = "error" if kind == "error" else "info"
        message = event.get("message") or kind
        with session_scope(self.db) as session:
            q.add_event(session=session, job_id=job.id, level=level, message=str(message), metrics=metrics)
            if kind in ("start", "step"):
                current = q.get_job(session=session, job_id=job.id)
                progress = {"step": event.get("step", 0), "total_steps": event.get("total_steps")}
                current.config = {**(current.config or {}), "_progress": progress}
                session.add(current)

    def _notify(self, method: str, *args: Any) -> None:
        if self.observer is None:
            return
        try:
            getattr(self.observer, method)(*args)
        except Exception:  # noqa: BLE001 — Slack trouble must not fail training
            log.exception("job observer %s failed", method)


def _stderr_reason(handle: Any) -> str:
    tail = getattr(handle, "stderr_tail", lambda: "")()
    lines = [line for line in tail.strip().splitlines() if line.strip()]
    return f"the training program failed: {lines[-1][:300]}" if lines else ""
