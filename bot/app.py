"""``create_app``: the Bolt app with every listener wired and one error handler."""

from __future__ import annotations

import logging

from slack_bolt import App

from bot import listeners
from bot.services import Services

log = logging.getLogger(__name__)


def create_app(services: Services) -> App:
    settings = services.settings
    app = App(
        token=settings.slack_bot_token,
        signing_secret=settings.slack_signing_secret or None,
        client=services.client,
        # Socket Mode requests are not signed; HTTP ones always are.
        request_verification_enabled=not settings.socket_mode,
        process_before_response=False,
    )

    @app.middleware
    def _inject_services(context, next):  # noqa: ANN001
        context["services"] = services
        return next()

    @app.error
    def _on_error(error, body, logger):  # noqa: ANN001
        kind = (body or {}).get("type") or (body or {}).get("command") or "request"
        logger.error("unhandled error while handling %s: %s", kind, error, exc_info=error)

    listeners.register(app)
    return app
