"""``/tune backfill [#channel] [days=N]`` (admins): curated answers from a channel's history, with
the same rules as live curation; progress and the summary in one message in this channel."""

from __future__ import annotations

from collections.abc import Callable

from bot.backfill import Backfill, parse_channel, start_backfill
from bot.payloads import Command
from bot.services import Services

USAGE = (
    "Usage: `/tune backfill [#channel] [days=N]` — learn from the curate emoji already in a "
    "channel's history (default: this channel, all of its history)."
)


def parse(words: list[str], here: str) -> tuple[str, float | None] | str:
    """(channel, days) from the command's words, or the sentence saying what is wrong."""
    channel, days = here, None
    for word in words:
        key, eq, value = word.partition("=")
        if eq and key.lower() == "days":
            try:
                days = float(value)
            except ValueError:
                return f"`days` must be a number of days, not `{value}`. {USAGE}"
            if days <= 0:
                return f"`days` must be more than 0. {USAGE}"
        elif (found := parse_channel(word)) is not None:
            channel = found
        else:
            return f"I don't understand `{word}`: pick the channel from Slack's list. {USAGE}"
    return channel, days


def backfill(command: Command, services: Services, ack: Callable, respond: Callable) -> None:
    parsed = parse(command.words[1:], command.channel)
    if isinstance(parsed, str):
        ack(text=parsed)
        return
    channel, days = parsed
    window = f"the last {days:g} days of " if days else ""
    ack(text=f"Reading {window}<#{channel}>'s history for curated answers; I'll keep a message "
             "here up to date.")
    tell = lambda text: respond(text=text, response_type="ephemeral")  # noqa: E731
    runner = Backfill(services.db, services.client, services.curation)
    start_backfill(runner, tell, channel, days=days, requested_by=command.user,
                   report_channel=command.channel)
