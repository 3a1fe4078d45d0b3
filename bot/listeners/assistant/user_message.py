from bot.asking import answer_in_slack
from bot.conversation import strip_mentions


def user_message(payload, context) -> None:  # noqa: ANN001
    """A question (or a follow-up) in an assistant thread: answered in that thread."""
    answer_in_slack(
        context["services"],
        surface="assistant",
        user=payload.get("user", ""),
        channel=payload.get("channel", ""),
        text=strip_mentions(payload.get("text") or ""),
        thread_ts=payload.get("thread_ts", ""),
        message_ts=payload.get("ts", ""),
    )
