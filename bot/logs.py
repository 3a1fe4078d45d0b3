"""Logging set-up for entry points: nothing secret reaches a log line."""

from __future__ import annotations

import logging


def install_redaction() -> None:
    """Redact PII and secrets in every record handled by the root logger's handlers."""
    from engine.redact import RedactingFilter

    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO)
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
