"""Evaluation in Slack (DESIGN.md step 4): the Slack side of ``engine.evaluate.service``.

``/tune eval <job>``, ``threadtune eval JOB`` and the worker (when a training job succeeds) all
end here:

1. :meth:`EvaluationService.check` checks the job quickly (the slash command answers within
   Slack's 3 seconds with what will happen or why not).
2. :meth:`EvaluationService.run` — on the process's worker pool for the slash command, see
   :meth:`launch` — evaluates the job's adapter against the base model with the model backend
   shared with A/B rounds (one copy of the base weights in the bot), registers the model, and
   posts the report in the job's thread: a Block Kit summary (``bot.blocks.evaluation``) and the
   PNG charts (``files_upload_v2``). A job without a Slack message gets a new message in the
   channel the request came from.
3. When the verdict is *needs A/B*, a blind A/B round of the model starts in that channel
   (``bot.ab_rounds``), and the summary says so.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy.engine import Engine

from bot.ab_rounds import DEFAULT_PAIRS, ABRoundService, RoundPlan, RoundRefused
from bot.blocks import evaluation as blocks
from bot.slack_api import explain
from bot.work import Workers
from engine.answer import GroundingConfig
from engine.evaluate.run import EvalConfig
from engine.evaluate.service import (
    EvaluationError,
    JobEvaluation,
    JobInputs,
    evaluate_job,
    job_inputs,
)
from storage.db import session_scope
from storage.models import Job

log = logging.getLogger(__name__)


class EvaluationRefused(Exception):
    """An evaluation cannot start; the message says why in a sentence."""


def parse_job_ref(text: str) -> int:
    """``7``, ``#7`` or ``job-7`` → 7."""
    ref = text.strip().lstrip("#")
    if ref.lower().startswith("job-"):
        ref = ref[4:]
    if not ref.isdigit():
        raise EvaluationRefused(f"`{text}` is not a job number; `/tune jobs` lists them.")
    return int(ref)


@dataclass(frozen=True)
class Destination:
    """Where a report goes: the job's thread, or a new message in ``channel`` (``thread_ts``
    empty)."""

    channel: str
    thread_ts: str = ""


def destination(inputs: JobInputs, fallback_channel: str = "") -> Destination | None:
    """The job's thread when the job has a Slack message; else a new message in the channel the
    job came from or the request came from; None when there is nowhere to post."""
    if inputs.channel and inputs.status_ts:
        return Destination(inputs.channel, inputs.status_ts)
    channel = inputs.channel or fallback_channel
    return Destination(channel) if channel else None


@dataclass
class EvaluationService:
    """Runs evaluations and posts their reports (see the module docstring).

    ``backend_factory`` gives the process's in-process backend (``bot.backends.Serving.inprocess``:
    one copy of the base model, shared with /ask, A/B rounds and the deploy probe), which scores
    the test answers' loss and perplexity on this machine's device (a vLLM server cannot).
    ``generator_factory`` (``Serving.serving`` when VLLM_URL is set, else None) gives the vLLM
    client that generates the base's and the candidate's answers, all sent at once so the server
    batches them; when the server is down or refuses the candidate the answers are generated
    in-process and the report says why (``engine.evaluate.service``).
    ``rounds`` starts the A/B round a *needs A/B* verdict asks for (None: no round)."""

    db: Engine
    client: WebClient
    home: Path
    backend_factory: Callable[[], Any]
    encryption_key: bytes | None = None
    generator_factory: Callable[[], Any] | None = None
    rounds: ABRoundService | None = None
    work: Workers = field(default_factory=lambda: Workers(1, "eval"))
    config: EvalConfig = field(default_factory=EvalConfig)
    grounding: GroundingConfig | None = None  # how /ask grounds answers (None: the defaults)
    probes: list | None = None  # None: the shipped general probes
    auto_ab: bool = True
    ab_pairs: int | None = None  # None: the A/B default
    _running: set[int] = field(init=False, default_factory=set)
    _guard: threading.Lock = field(init=False, default_factory=threading.Lock)

    # -- starting ---------------------------------------------------------------------------------

    def check(self, ref: str | int) -> JobInputs:
        """The job's checked inputs, or :class:`EvaluationRefused` with a sentence."""
        job_id = ref if isinstance(ref, int) else parse_job_ref(ref)
        try:
            inputs = job_inputs(self.db, job_id)
        except EvaluationError as exc:
            raise EvaluationRefused(str(exc)) from None
        with self._guard:
            if job_id in self._running:
                raise EvaluationRefused(
                    f"Job {job_id} is being evaluated already; its report will be posted."
                )
        return inputs

    def launch(self, inputs: JobInputs, *, requested_by: str = "", channel: str = "") -> Future:
        """:meth:`run` on the worker pool; failures are posted as sentences, traces logged."""
        return self.work.submit(
            self._run_quietly, inputs, requested_by=requested_by, channel=channel
        )

    def _run_quietly(self, inputs: JobInputs, *, requested_by: str, channel: str) -> None:
        try:
            self.run(inputs, requested_by=requested_by, channel=channel)
        except Exception:  # noqa: BLE001 — run() told the people; the log keeps the trace
            log.exception("evaluation of job %s failed", inputs.job_id)

    def on_job_succeeded(self, job_id: int) -> JobEvaluation | None:
        """The worker's hook after a training job succeeded: evaluate it and post the report in
        the job's thread, on the calling thread (a worker run with ``--once`` would exit under a
        pooled task). Failures are posted in the thread and logged, never raised: the job stays
        succeeded."""
        try:
            return self.run(job_id, background_ab=False)
        except EvaluationRefused as exc:
            log.warning("job %s was not evaluated: %s", job_id, exc)
            with session_scope(self.db) as s:
                job = s.get(Job, job_id)
                where = Destination(job.channel, job.status_ts) if job and job.channel else None
            self._post_failure(where, job_id, _sentence(exc), "", "")
        except Exception:  # noqa: BLE001 — posted by run(); keep the trace
            log.exception("evaluation of job %s failed", job_id)
        return None

    # -- running ----------------------------------------------------------------------------------

    def run(
        self,
        inputs: JobInputs | int,
        *,
        requested_by: str = "",
        channel: str = "",
        background_ab: bool = True,
    ) -> JobEvaluation:
        """Evaluate, register, post the report and (on *needs A/B*) start a round — on a
        background thread, or on this one with ``background_ab=False``. A failure is posted where
        the report would have gone (or told to the requester), then re-raised."""
        if isinstance(inputs, int):
            inputs = self.check(inputs)
        job_id = inputs.job_id
        with self._guard:
            if job_id in self._running:
                raise EvaluationRefused(f"Job {job_id} is being evaluated already.")
            self._running.add(job_id)
        where = destination(inputs, channel)
        try:
            result = evaluate_job(
                self.db,
                self.home,
                job_id,
                backend_factory=self.backend_factory,
                encryption_key=self.encryption_key,
                config=self.config,
                probes=self.probes,
                inputs=inputs,
                grounding=self.grounding,
                generator_factory=self.generator_factory,
            )
        except Exception as exc:
            reason = _sentence(exc)
            log.warning("evaluation of job %s failed: %s", job_id, reason)
            self._post_failure(where, job_id, reason, requested_by, channel)
            raise
        finally:
            with self._guard:
                self._running.discard(job_id)
        log.info(
            "job %s evaluated as %s: %s (%s)",
            job_id,
            result.model.name,
            result.report.verdict,
            "; ".join(result.report.reasons),
        )
        if where is not None:
            self.publish(
                result,
                where,
                requested_by=requested_by or inputs.requested_by,
                background_ab=background_ab,
            )
        return result

    def publish(
        self,
        result: JobEvaluation,
        where: Destination,
        *,
        requested_by: str = "",
        background_ab: bool = True,
    ) -> str:
        """Post the summary (starting an A/B round first when the verdict asks for one) and upload
        the charts in its thread. Returns the summary's ts ("" when Slack refused it)."""
        plan, ab_note = None, ""
        if result.report.verdict == "needs_ab" and self.auto_ab and self.rounds is not None:
            plan, ab_note = self._plan_ab(result, where.channel, requested_by)
        ctx = blocks.ReportContext(
            job_id=result.job_id,
            model_name=result.model.name,
            report_path=str(result.markdown_path),
            ab_note=ab_note,
            requested_by=requested_by,
        )
        client = self.client
        try:
            response = client.chat_postMessage(
                channel=where.channel,
                thread_ts=where.thread_ts or None,
                text=blocks.summary_text(result.report, ctx),
                blocks=[b.to_dict() for b in blocks.summary_blocks(result.report, ctx)],
                unfurl_links=False,
                unfurl_media=False,
            )
        except SlackApiError as exc:
            log.warning("could not post job %s's evaluation: %s", result.job_id, explain(exc))
            return ""
        thread = where.thread_ts or str(response["ts"])
        charts = result.charts
        if charts:
            try:
                client.files_upload_v2(
                    channel=where.channel,
                    thread_ts=thread,
                    file_uploads=[
                        {
                            "file": str(p),
                            "filename": p.name,
                            "title": f"{result.model.name}: {_chart_title(p)}",
                        }
                        for p in charts
                    ],
                )
            except SlackApiError as exc:
                log.warning("could not upload job %s's charts: %s", result.job_id, explain(exc))
        if plan is not None and self.rounds is not None:
            if background_ab:
                self.rounds.launch(plan)
            else:
                try:
                    self.rounds.run(plan)
                except RoundRefused as exc:
                    log.warning("A/B round of %s did not start: %s", result.model.name, exc)
        return str(response["ts"])

    def _plan_ab(
        self, result: JobEvaluation, channel: str, requested_by: str
    ) -> tuple[RoundPlan | None, str]:
        assert self.rounds is not None
        try:
            plan = self.rounds.plan(
                result.model.name,
                channel=channel,
                requested_by=requested_by,
                pairs=self.ab_pairs or DEFAULT_PAIRS,
            )
        except RoundRefused as exc:
            return None, blocks.ab_refused_note(str(exc))
        return plan, blocks.ab_started_note(len(plan.prompts))

    def _post_failure(
        self,
        where: Destination | None,
        job_id: int,
        reason: str,
        requested_by: str,
        channel: str,
    ) -> None:
        client = self.client
        text = blocks.failure_text(job_id, reason)
        try:
            if where is not None:
                client.chat_postMessage(
                    channel=where.channel, thread_ts=where.thread_ts or None, text=text
                )
            elif requested_by and channel:
                client.chat_postEphemeral(channel=channel, user=requested_by, text=text)
        except SlackApiError as exc:
            log.warning("could not report job %s's failed evaluation: %s", job_id, explain(exc))


def _chart_title(path: Path) -> str:
    return {
        "loss_curve": "training and validation loss",
        "metrics": "metrics, base vs candidate",
        "answer_lengths": "answer lengths",
    }.get(path.stem, path.stem)


def _sentence(exc: Exception) -> str:
    if isinstance(exc, SlackApiError):
        return explain(exc)
    text = str(exc).strip() or type(exc).__name__
    text = text if len(text) <= 500 else text[:497] + "…"  # a sentence for Slack, not a dump
    return text if text.endswith((".", "…")) else text + "."


__all__ = [
    "Destination",
    "EvaluationRefused",
    "EvaluationService",
    "destination",
    "parse_job_ref",
]
