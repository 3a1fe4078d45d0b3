"""Logging set-up for entry points: nothing secret reaches a log line."""

from __future__ import annotations

import logging


def install_redaction() -> None:
    """Redact PII and secrets in every record handled by the root logger's handlers."""
    from engine.redact import RedactingFilter, redact

    # Build the recognizers before the filter is installed: building them logs, and a filter
    # that needs them while they are being built would wait on itself.
    redact("warm-up")
    # the recognizers log at debug level while they scan text: that text is exactly what
    # must not reach a log, and filtering those records would recurse into the recognizers
    logging.getLogger("presidio-analyzer").setLevel(logging.WARNING)
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO)
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
