"""``threadtune serve``: the Slack bot (Socket Mode with SLACK_APP_TOKEN, else HTTP).

In Socket Mode ``/healthz`` and ``/metrics`` are served on HEALTH_PORT (``--port`` is HTTP mode's).

On SIGTERM (or Ctrl-C) the bot stops taking requests and new work, gives answers in progress
SHUTDOWN_GRACE_S seconds to finish, marks the rest interrupted (message and audit row) and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading

from slack_bolt import App

from bot.app import create_app
from bot.backfill import resume_unfinished
from bot.cli.common import open_db
from bot.front import serve_with_front
from bot.home import JobWatch, load_viewers, refresh_all
from bot.inbox import Inbox
from bot.logs import install_redaction
from bot.scheduler import BotScheduler, start_ab_deadlines
from bot.server import serve_socket_mode
from bot.services import Services
from bot.settings import Settings
from bot.slack_api import make_client
from engine.threads import apply_torch_threads
from engine.train.kernels import limit_kernel_caches

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="run the Slack bot and its scheduler")
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (HTTP mode: Slack's requests; Socket Mode: /healthz, /metrics)",
    )
    serve.add_argument("--port", type=int, default=3000, help="HTTP mode: port (default 3000)")
    serve.set_defaults(func=run, log_level=logging.INFO)  # a service: its log is its output


def build_runtime(settings: Settings) -> tuple[Services, App, Inbox]:
    """Everything ``serve`` needs, built from settings: database, Slack client, services (with the
    scheduler started and open A/B deadlines re-armed), app."""
    settings.require_slack()
    db = open_db(settings)
    client = make_client(settings.slack_bot_token, settings.slack_api_url)
    services = Services.build(settings, db, client, scheduler=BotScheduler())
    assert services.scheduler is not None
    # re-arms open A/B deadlines; overdue rounds close at once
    start_ab_deadlines(services.scheduler, services.rounds)
    # curation in Slack syncs the index at once; the timer catches imports and other processes
    assert services.indexing is not None
    services.scheduler.every("index-sync", settings.index_sync_s, services.indexing.request)
    load_viewers(services)  # who opened the Home tab before this start
    # jobs change state in the worker, another process: the database says when
    services.scheduler.every("home-jobs", settings.home_refresh_s, JobWatch(services).tick)
    services.rounds.on_closed.append(lambda: refresh_all(services))
    services.serving.on_change(lambda: refresh_all(services))
    # backfills started from Slack that a stopped or killed bot left half-way go on
    resume_unfinished(services.db, services.client, services.curation)
    if not settings.threadtune_encryption_key:
        log.warning("THREADTUNE_ENCRYPTION_KEY is not set: adapters are stored in clear")
    if not settings.curators:
        log.warning(
            "CURATORS is empty: nobody's emoji will curate examples until it lists Slack user IDs"
        )
    inbox = Inbox.from_settings(
        services.db,
        settings,
        # test hook only: listeners stall after the ack so a test can kill the bot in between
        stall_after_ack_s=float(os.environ.get("THREADTUNE_TEST_STALL_AFTER_ACK_S") or 0),
    )
    bolt = create_app(services, inbox)
    # what an earlier process acknowledged but did not finish is applied now, once
    replayed = inbox.replay(bolt)
    if replayed:
        log.warning("replayed %d request(s) an earlier process had not finished", replayed)
    inbox.prune()
    services.scheduler.every("inbox-prune", 3600, inbox.prune)
    return services, bolt, inbox


def run(args: argparse.Namespace, settings: Settings) -> int:
    install_redaction()
    limit_kernel_caches()  # a long-running process generates in ever-new shapes
    apply_torch_threads(settings.torch_threads)
    services, bolt, inbox = build_runtime(settings)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        log.info("%s received: finishing the work in progress, then exiting", name)
        services.work.close()  # new /ask questions are told at once that the bot is restarting
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if settings.socket_mode:
        serve_socket_mode(
            bolt,
            settings.slack_app_token,
            stop,
            db=services.db,
            host=args.host,
            health_port=settings.health_port,
            grace_s=settings.socket_mode_grace_s,
        )
    else:
        # events are acknowledged by a process of its own (bot.front), the rest passed on here
        serve_with_front(
            bolt,
            inbox,
            services.db,
            signing_secret=settings.slack_signing_secret,
            host=args.host,
            port=args.port,
            stop=stop,
        )
    if not stop.is_set():
        return 1  # the server ended by itself (the port was taken, say): the log says why
    services.shutdown()
    log.info("threadtune stopped")
    return 0
