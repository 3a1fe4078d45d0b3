"""The backfill's one message in Slack: progress while it reads, the summary when it ends."""

from __future__ import annotations

from datetime import UTC, datetime

from slack_sdk.models.blocks import Block

from bot.blocks.common import sections
from engine.backfill import Tally
from engine.jobs.progress import format_eta

REASONS = {
    "too_short": "too short",
    "duplicate": "already another thread's example",
    "excluded": "in an excluded thread",
    "not_in_thread": "not in a thread",
    "thread_parent": "on the question, not an answer",
    "bot_answer": "posted by a bot",
    "no_question": "no question before the answer",
    "empty_answer": "no text",
    "not_found": "gone",
}


def _day(ts: str) -> str:
    seconds = int(ts.partition(".")[0] or 0)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d")


def refused_text(tally: Tally) -> str:
    """"2 refused (1 too short, 1 posted by a bot)", or "" when none was."""
    if not tally.refused_total:
        return ""
    parts = ", ".join(
        f"{n} {REASONS.get(code, code.replace('_', ' '))}"
        for code, n in sorted(tally.refused.items(), key=lambda item: (-item[1], item[0]))
    )
    return f"{tally.refused_total} refused ({parts})"


def _counts(tally: Tally) -> str:
    parts = [
        f"{tally.curated} new example{'s' if tally.curated != 1 else ''}",
        f"{tally.already} already curated",
    ]
    if refused := refused_text(tally):
        parts.append(refused)
    parts.append(f"{tally.excluded} thread{'s' if tally.excluded != 1 else ''} excluded")
    return ", ".join(parts)


def progress_text(channel: str, tally: Tally, *, eta_s: float | None, resumed: bool) -> str:
    back = f" (back to {_day(tally.oldest_read)})" if tally.oldest_read else ""
    again = " (resumed where it stopped)" if resumed else ""
    eta = f" About {format_eta(eta_s)} left at this pace." if eta_s is not None else ""
    return (
        f":hourglass_flowing_sand: Reading <#{channel}>'s history for curated answers{again}: "
        f"{tally.threads} threads so far{back}. {_counts(tally)}.{eta}"
    )


def summary_text(channel: str, tally: Tally, *, error: str = "") -> str:
    if error:
        return (
            f":warning: The backfill of <#{channel}> stopped: {error} So far: "
            f"{tally.threads} threads read, {_counts(tally)}. Run it again to resume."
        )
    return (
        f":white_check_mark: Backfill of <#{channel}> finished: {tally.threads} threads read, "
        f"{_counts(tally)}."
    )


def backfill_blocks(text: str) -> list[Block]:
    return list(sections(text))
