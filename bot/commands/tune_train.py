"""``/tune train [key=value…]``, ``/tune jobs``, ``/tune cancel <job>``."""

from __future__ import annotations

import logging
from collections.abc import Callable

from slack_sdk.errors import SlackApiError

from bot.blocks.home import STATE_ICONS
from bot.blocks.jobs import JobProgress, job_blocks, job_text
from bot.commands.tune_dataset import build_snapshot_for
from bot.payloads import Command
from bot.services import Services
from bot.slack_api import explain
from bot.work import start
from engine.basemodel import ensure_base_model
from engine.jobs.submit import SubmitError, parse_overrides, submit_training
from engine.train.config import TrainConfig, TrainConfigError
from storage import jobs as jobs_q
from storage.db import session_scope
from storage.models import DatasetSnapshot

log = logging.getLogger(__name__)


def train(command: Command, services: Services, ack: Callable, respond: Callable) -> None:
    try:
        overrides = parse_overrides(command.words[1:])
        # the settings are checked before a snapshot is built: a typo costs nothing
        TrainConfig.from_overrides({}, overrides)
    except (SubmitError, TrainConfigError) as exc:
        ack(text=str(exc))
        return
    ack(text="Preparing a training job: building the dataset snapshot and checking the settings…")
    tell = lambda text: respond(text=text, response_type="ephemeral")  # noqa: E731
    start(services.work, tell, queue_training, command, services, overrides, respond)


def queue_training(
    command: Command, services: Services, overrides: dict[str, str], respond: Callable
) -> int | None:
    """Snapshot → validated job → the job's message in the channel. Returns the job id."""
    try:
        built = build_snapshot_for(services, command.user)
        with session_scope(services.db) as session:
            snapshot = session.get(DatasetSnapshot, built.snapshot_id)
            job, created = submit_training(
                session,
                snapshot=snapshot,
                base_model_path=str(_base_model(services)),
                overrides=overrides,
                requested_by=command.user,
                request_key=f"slack:{command.trigger_id}" if command.trigger_id else None,
                channel=command.channel,
            )
    except SubmitError as exc:
        respond(text=f"No training job was queued: {exc}", response_type="ephemeral")
        return None
    except Exception as exc:  # noqa: BLE001
        log.exception("could not queue a training job")
        respond(text=f"No training job was queued: {exc}", response_type="ephemeral")
        return None
    if created:
        post_job_message(services, job)
    return job.id


def _base_model(services: Services):  # noqa: ANN202
    return ensure_base_model(services.settings.home, services.settings.base_model)


def post_job_message(services: Services, job) -> None:  # noqa: ANN001
    progress = JobProgress(
        job.id,
        job.state,
        method=job.method,
        snapshot_id=job.snapshot_id,
        requested_by=job.requested_by,
    )
    try:
        response = services.client.chat_postMessage(
            channel=job.channel, text=job_text(progress), blocks=job_blocks(progress)
        )
    except SlackApiError as exc:
        log.warning("could not post job %s's message: %s", job.id, explain(exc))
        return
    with session_scope(services.db) as session:
        row = jobs_q.get_job(session=session, job_id=job.id)
        row.status_ts = response["ts"]
        session.add(row)


def jobs(command: Command, services: Services, ack: Callable, respond: Callable) -> None:
    with session_scope(services.db) as session:
        rows = jobs_q.list_jobs(session=session, limit=10)
    if not rows:
        ack(text="No training jobs yet. An admin starts one with `/tune train`.")
        return
    lines = []
    for job in rows:
        progress = job.progress
        step = f", step {progress.step}/{progress.total_steps}" if progress.total_steps else ""
        why = f" — {job.error}" if job.state == "failed" and job.error else ""
        lines.append(
            f"{STATE_ICONS.get(job.state, '•')} Job {job.id} `{job.method}` {job.state}{step}"
            f" (snapshot #{job.snapshot_id}, by <@{job.requested_by}>){why}"
        )
    ack(text="\n".join(lines))


def cancel(command: Command, services: Services, ack: Callable, respond: Callable) -> None:
    words = command.words[1:]
    if not words or not words[0].lstrip("#").isdigit():
        ack(text="Which job? Use `/tune cancel <job number>` (see `/tune jobs`).")
        return
    job_id = int(words[0].lstrip("#"))
    with session_scope(services.db) as session:
        job = jobs_q.get_job(session=session, job_id=job_id)
        if job is None:
            ack(text=f"There is no job {job_id}; `/tune jobs` lists them.")
            return
        try:
            jobs_q.request_cancel(session=session, job=job)
        except jobs_q.TransitionError:
            ack(text=f"Job {job_id} has already {job.state}; nothing to cancel.")
            return
        jobs_q.add_event(
            session=session, job_id=job_id, level="warning", message=f"cancelled by {command.user}"
        )
    ack(text=f"Job {job_id} is cancelled; a running worker stops it at its next checkpoint.")
    observer = services.job_observer
    if observer is not None:
        with session_scope(services.db) as session:
            observer.on_state(jobs_q.get_job(session=session, job_id=job_id))
