"""``threadtune serve``: the Slack bot (Socket Mode with SLACK_APP_TOKEN, else HTTP)."""

from __future__ import annotations

import argparse
import logging

from bot.settings import Settings

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="run the Slack bot and its scheduler")
    serve.add_argument("--host", default="127.0.0.1", help="HTTP mode: address to listen on")
    serve.add_argument("--port", type=int, default=3000, help="HTTP mode: port (default 3000)")
    serve.set_defaults(func=run)


def build_runtime(settings: Settings):  # noqa: ANN201
    """Everything ``serve`` needs, built from settings: database, Slack client, services, app."""
    from bot.app import create_app
    from bot.services import Services
    from bot.slack_api import make_client
    from storage.db import make_engine, upgrade

    settings.require_slack()
    upgrade(settings.db_url)
    db = make_engine(settings.db_url)
    client = make_client(settings.slack_bot_token, settings.slack_api_url)
    services = Services.build(settings, db, client)
    from bot.ab_rounds import install as install_ab_rounds

    rounds = install_ab_rounds(services)  # A/B round service + scheduler: re-arms deadlines, closes overdue rounds
    from bot.backends import shared
    from bot.home import refresh_all

    rounds.on_closed.append(lambda: refresh_all(services))
    shared(services).on_change(lambda: refresh_all(services))
    from bot.cli.jobs import make_observer

    services.extras["job_observer"] = make_observer(settings, db)
    if not settings.threadtune_encryption_key:
        log.warning("THREADTUNE_ENCRYPTION_KEY is not set: adapters are stored in clear")
    if not settings.curators:
        log.warning("CURATORS is empty: nobody's emoji will curate examples until it lists Slack user IDs")
    return services, create_app(services)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from bot.logs import install_redaction
    from bot.server import serve_http, serve_socket_mode

    install_redaction()
    services, bolt = build_runtime(settings)
    if settings.socket_mode:
        serve_socket_mode(bolt, settings.slack_app_token)
    else:
        serve_http(bolt, services.db, signing_secret=settings.slack_signing_secret,
                   host=args.host, port=args.port)
    return 0
