import logging

from bot.asking import answer_in_slack
from bot.conversation import strip_mentions
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


def message(event, context) -> None:  # noqa: ANN001
    """A person's DM to the bot (the Messages tab) is a question, answered in the DM; replies in
    a DM thread reach the assistant listeners (``bot/listeners/assistant``) first. Other messages
    (channels, bots, edits) need no action; acknowledging them stops Slack's retries."""
    if (
        event.get("channel_type") != "im"
        or event.get("subtype")
        or event.get("bot_id")
        or event.get("thread_ts")
    ):
        return
    answer_in_slack(
        context["services"],
        surface="dm",
        user=event.get("user", ""),
        channel=event.get("channel", ""),
        text=strip_mentions(event.get("text") or ""),
        message_ts=event.get("ts", ""),
    )
