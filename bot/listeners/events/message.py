import logging

from bot.payloads import MessageChange

log = logging.getLogger(__name__)


def _apply(body, context) -> None:  # noqa: ANN001
    change = MessageChange.parse(body)
    if change is not None:
        outcome = context["services"].curation.message_changed(change)
        log.debug("%s %s → %s", change.kind, change.event_id, outcome)


def message_changed(body, context) -> None:  # noqa: ANN001
    """An edited message re-derives the examples of its thread."""
    _apply(body, context)


def message_deleted(body, context) -> None:  # noqa: ANN001
    """A deleted answer deletes its example; a deleted turn re-derives the thread's examples."""
    _apply(body, context)


def message(body) -> None:  # noqa: ANN001
    """Other messages (people's and bots') need no action; acknowledging them stops Slack's
    retries."""
