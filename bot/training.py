"""Training jobs in Slack: ``/tune train`` queues one, and the worker's observer keeps the job's
message up to date (at most one ``chat.update`` a second) and posts the loss curve at the end."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from slack_sdk.errors import SlackApiError

from bot.blocks.jobs import JobProgress, job_blocks, job_text
from bot.slack_api import explain
from engine.jobs.progress import Throttle, eta_seconds

log = logging.getLogger(__name__)

UPDATE_INTERVAL_S = 1.0


class SlackJobObserver:
    """Turns a job's training events into its Slack message (engine.jobs' JobObserver)."""

    def __init__(self, client, *, on_succeeded=None, interval_s: float = UPDATE_INTERVAL_S):  # noqa: ANN001
        self.client = client
        self.on_succeeded = on_succeeded
        self.interval_s = interval_s
        self._progress: dict[int, JobProgress] = {}
        self._throttles: dict[int, Throttle] = {}
        self._started: dict[int, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def progress(self, job: Any) -> JobProgress:
        with self._lock:
            p = self._progress.get(job.id)
            if p is None:
                p = self._progress[job.id] = JobProgress(
                    job.id,
                    job.state,
                    method=job.method,
                    snapshot_id=job.snapshot_id,
                    requested_by=job.requested_by,
                )
            p.state = job.state
            return p

    def on_event(self, job: Any, event: dict[str, Any]) -> None:
        p = self.progress(job)
        kind = event.get("event")
        now = time.monotonic()
        if kind == "start":
            p.total_steps = int(event.get("total_steps") or 0)
            p.resumed_from = event.get("resumed_from")
            p.choices = dict(event.get("choices") or p.choices)
            self._started[job.id] = (now, int(event.get("resumed_from") or 0))
        elif kind == "step":
            p.step = int(event.get("step", p.step))
            p.total_steps = int(event.get("total_steps") or p.total_steps)
            p.loss = event.get("loss", p.loss)
            start, first_step = self._started.get(job.id, (now, 0))
            eta = eta_seconds(
                elapsed_s=now - start, step=p.step, total_steps=p.total_steps, first_step=first_step
            )
            if eta is not None:
                p.eta_s = eta
        elif kind == "eval":
            p.eval_loss = event.get("eval_loss", p.eval_loss)
        elif kind == "budget":  # the run trimmed its steps to the time budget: say so at once
            p.total_steps = int(event.get("total_steps") or p.total_steps)
            p.choices = dict(event.get("choices") or p.choices)
        elif kind == "error":
            p.error = str(event.get("message", ""))
        else:
            return
        self._update(job, force=kind in ("start", "budget", "error"))

    def on_state(self, job: Any) -> None:
        self.progress(job)
        self._update(job, force=True)

    def on_finished(self, job: Any) -> None:
        p = self.progress(job)
        if job.error and not p.error:
            p.error = job.error
        if job.state == "succeeded" and p.total_steps:
            p.step = p.total_steps
        self._update(job, force=True)
        if job.state == "succeeded":
            self._post_loss_curve(job)
            if self.on_succeeded is not None:
                try:
                    self.on_succeeded(job.id)
                except Exception:  # noqa: BLE001 — evaluation failing must not fail the job
                    log.exception("post-training step failed for job %s", job.id)

    def _update(self, job: Any, *, force: bool) -> None:
        if not job.channel or not job.status_ts:
            return
        with self._lock:
            throttle = self._throttles.setdefault(job.id, Throttle(self.interval_s))
            if not throttle.ready(final=force):
                return
            p = self._progress[job.id]
        try:
            self.client.chat_update(
                channel=job.channel, ts=job.status_ts, text=job_text(p), blocks=job_blocks(p)
            )
        except SlackApiError as exc:
            log.warning("could not update job %s's message: %s", job.id, explain(exc))

    def _post_loss_curve(self, job: Any) -> None:
        if not job.channel or not job.run_dir:
            return
        metrics = Path(job.run_dir) / "metrics.jsonl"
        if not metrics.is_file():
            return
        try:
            from types import SimpleNamespace

            from engine.evaluate.report import loss_figure
            from engine.evaluate.run import read_train_metrics

            figure = loss_figure(SimpleNamespace(train_curve=read_train_metrics(metrics)))
            if figure is None:
                return
            path = Path(job.run_dir) / "loss_curve.png"
            figure.savefig(path, dpi=110, bbox_inches="tight")
            self.client.files_upload_v2(
                channel=job.channel,
                thread_ts=job.status_ts or None,
                file=str(path),
                filename="loss_curve.png",
                title=f"Job {job.id}: training and validation loss",
            )
        except SlackApiError as exc:
            log.warning("could not post job %s's loss curve: %s", job.id, explain(exc))
        except Exception:  # noqa: BLE001 — a chart must not fail a finished job
            log.exception("could not draw job %s's loss curve", job.id)
