"""An @mention of the bot: the question is answered in the thread it was asked in (a mention at
the top of a channel starts a thread on it)."""

from bot.asking import answer_in_slack
from bot.conversation import strip_mentions


def app_mention(event, context) -> None:  # noqa: ANN001
    if event.get("bot_id") or event.get("subtype"):
        return
    answer_in_slack(
        context["services"],
        surface="mention",
        user=event.get("user", ""),
        channel=event.get("channel", ""),
        text=strip_mentions(event.get("text") or ""),
        thread_ts=event.get("thread_ts") or event.get("ts", ""),
        message_ts=event.get("ts", ""),
    )
