"""``create_app``: the Bolt app with every listener wired, the durable inbox in front of them and
one error handler."""

from __future__ import annotations

import logging

from slack_bolt import App
from slack_bolt.error import BoltUnhandledRequestError

from bot import listeners
from bot.inbox import KEY, Inbox
from bot.services import Services

log = logging.getLogger(__name__)


def create_app(services: Services, inbox: Inbox | None = None) -> App:
    """``inbox`` writes each request before its ack (one is built from the settings if not
    given); ``threadtune serve`` replays its unfinished requests once the app is built."""
    settings = services.settings
    inbox = inbox or Inbox.from_settings(services.db, settings)
    app = App(
        token=settings.slack_bot_token,
        signing_secret=settings.slack_signing_secret or None,
        client=services.client,
        # HTTP requests are verified once, by the route (bot.server), before Bolt parses them;
        # Socket Mode requests are not signed.
        request_verification_enabled=False,
        process_before_response=False,
        # a request no listener takes reaches the error handler, which closes its inbox row
        raise_error_for_unhandled_request=True,
    )
    inbox.install(app)  # first: the row is written before anything else may ack

    @app.middleware
    def _inject_services(context, next):  # noqa: ANN001
        context["services"] = services
        return next()

    @app.error
    def _on_error(error, body, request, logger):  # noqa: ANN001
        if isinstance(error, BoltUnhandledRequestError):
            key = request.context.get(KEY) if request is not None else None
            if key:
                inbox.finish(key, "no listener")
            logger.debug("no listener for %s", (body or {}).get("type") or "request")
            return
        kind = (body or {}).get("type") or (body or {}).get("command") or "request"
        logger.error("unhandled error while handling %s: %s", kind, error, exc_info=error)

    listeners.register(app)
    return app
