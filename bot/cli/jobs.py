"""``threadtune worker``, ``threadtune train``, ``threadtune jobs [show|cancel] ID``."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from sqlalchemy.engine import Engine

from bot.cli.common import CommandError, open_db
from bot.services import Services
from bot.settings import ConfigError, Settings
from bot.slack_api import make_client
from engine.basemodel import ensure_base_model
from engine.dataset.build import build_snapshot
from engine.jobs.runners import runner_for
from engine.jobs.submit import describe, parse_overrides, submit_training
from engine.jobs.worker import Worker
from engine.registry.crypto import parse_key
from engine.retention import RetentionPolicy
from engine.threads import apply_torch_threads
from engine.train.config import TrainConfig
from engine.train.kernels import limit_kernel_caches
from storage.db import session_scope
from storage.jobs import TransitionError, get_job, list_events, list_jobs, request_cancel
from storage.models import DatasetSnapshot


def register(sub: argparse._SubParsersAction) -> None:
    worker = sub.add_parser("worker", help="claim and run training jobs")
    worker.add_argument("--once", action="store_true", help="run at most one job, then exit")
    worker.add_argument(
        "--lease", type=int, default=60, help="lease seconds (renewed while running)"
    )
    worker.add_argument(
        "--poll", type=float, default=2.0, help="seconds between looks at the queue"
    )
    worker.set_defaults(func=run_worker, log_level=logging.INFO)  # a service: its log is its output

    train = sub.add_parser("train", help="queue a training job on the latest (or a given) snapshot")
    train.add_argument("--snapshot", type=int, help="snapshot number (default: build one now)")
    train.add_argument(
        "settings", nargs="*", metavar="key=value", help="training settings, e.g. lora_r=8 epochs=3"
    )
    train.set_defaults(func=run_train)

    jobs = sub.add_parser("jobs", help="list training jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command")
    show = jobs_sub.add_parser("show", help="one job with its event log")
    show.add_argument("job", type=int)
    show.set_defaults(func=run_show)
    cancel = jobs_sub.add_parser("cancel", help="cancel a queued or running job")
    cancel.add_argument("job", type=int)
    cancel.set_defaults(func=run_cancel)
    jobs.set_defaults(func=run_list)


def _db(settings: Settings):  # noqa: ANN202
    return open_db(settings)


def worker_services(settings: Settings, db: Engine) -> Services | None:
    """The worker's services when a bot token is set (job progress in Slack, and evaluation of
    each job that succeeds), built once: one :class:`bot.backends.Serving` for the worker's
    lifetime, so the base model is loaded once however many jobs it evaluates. None without a
    token (the CLI prints instead). A/B rounds it starts are closed by the bot's scheduler sweep,
    so no scheduler runs here."""
    if not settings.slack_bot_token:
        return None
    client = make_client(settings.slack_bot_token, settings.slack_api_url)
    return Services.build(settings, db, client)


def retention_policy(settings: Settings) -> RetentionPolicy:
    return RetentionPolicy(
        run_days=settings.run_retention_days,
        ask_log_days=settings.ask_log_retention_days,
        ab_log_days=settings.ab_log_retention_days,
    )


def run_worker(args: argparse.Namespace, settings: Settings) -> int:
    limit_kernel_caches()  # evaluation generates in-process; the program inherits the caps
    apply_torch_threads(settings.torch_threads)  # and TORCH_THREADS for the training program
    db = _db(settings)
    services = worker_services(settings, db)
    worker = Worker(
        db,
        settings.home,
        runner_for(settings.ray_address or None, settings.ray_placement()),
        lease_seconds=args.lease,
        poll_seconds=args.poll,
        observer=services.job_observer if services else None,
        encryption_key=(
            parse_key(settings.threadtune_encryption_key)
            if settings.threadtune_encryption_key
            else None
        ),
        retention=None if args.once else retention_policy(settings),
    )
    if args.once:
        ran = worker.run_once()
        print("Ran one job." if ran else "No job was queued.")
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        worker.run_forever(stop)
    except KeyboardInterrupt:
        stop.set()
    return 0


def run_train(args: argparse.Namespace, settings: Settings) -> int:
    overrides = parse_overrides(args.settings)
    # the settings are checked before anything is built: a typo costs no snapshot
    TrainConfig.from_overrides({"base_model": settings.base_model}, overrides)
    db = _db(settings)
    try:
        base = ensure_base_model(settings.home, settings.base_model)
        with session_scope(db) as session:
            snapshot_id = (
                args.snapshot
                or build_snapshot(session, settings.home, base_model_path=base).snapshot_id
            )
        with session_scope(db) as session:
            snapshot = session.get(DatasetSnapshot, snapshot_id)
            if snapshot is None:
                raise CommandError(f"There is no snapshot #{snapshot_id}.")
            job, _ = submit_training(
                session,
                snapshot=snapshot,
                base_model_path=str(base),
                overrides=overrides,
                requested_by="cli",
            )
    finally:
        db.dispose()
    print(
        f"Job {job.id} queued on snapshot #{snapshot_id} ({describe(job.config)}). "
        "Run `threadtune worker` to train it."
    )
    return 0


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console
    from rich.table import Table

    with session_scope(_db(settings)) as session:
        rows = list_jobs(session=session, limit=30)
    table = Table(title="Training jobs")
    for column in ("job", "state", "method", "snapshot", "attempts", "progress", "error"):
        table.add_column(column)
    for job in rows:
        p = job.progress
        table.add_row(
            str(job.id),
            job.state,
            job.method,
            str(job.snapshot_id),
            str(job.attempts),
            f"{p.step}/{p.total_steps}" if p.total_steps else "",
            job.error[:60],
        )
    Console().print(table)
    return 0


def run_show(args: argparse.Namespace, settings: Settings) -> int:
    with session_scope(_db(settings)) as session:
        job = get_job(session=session, job_id=args.job)
        if job is None:
            raise ConfigError(f"There is no job {args.job}.")
        print(
            f"Job {job.id}: {job.state} ({job.method}, snapshot #{job.snapshot_id}, attempts "
            f"{job.attempts})"
        )
        if job.run_dir:
            print(f"Run folder: {job.run_dir}")
        if job.error:
            print(f"Error: {job.error}")
        for event in list_events(session=session, job_id=job.id, limit=10_000):
            print(
                f"  {event.created_at:%H:%M:%S} {event.level:7} "
                f"{describe_event(event.message, event.metrics)}"
            )
    return 0


def describe_event(message: str, metrics: dict) -> str:
    """``step`` + {"step": 3, "loss": 1.2345678} → ``step step=3 loss=1.235``."""
    parts = [message]
    for key, value in (metrics or {}).items():
        if value is None or key in ("attempt", "worker", "resume"):
            continue
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)


def run_cancel(args: argparse.Namespace, settings: Settings) -> int:
    with session_scope(_db(settings)) as session:
        job = get_job(session=session, job_id=args.job)
        if job is None:
            raise ConfigError(f"There is no job {args.job}.")
        was_running = job.state == "running"
        try:
            request_cancel(session=session, job=job, reason="cancelled from the command line")
        except TransitionError as exc:
            print(f"Nothing to cancel: {exc}.", file=sys.stderr)
            return 1
    print(
        f"Job {args.job} cancelled."
        + (
            " Its worker stops the training program within seconds and keeps its run folder."
            if was_running
            else ""
        )
    )
    return 0
