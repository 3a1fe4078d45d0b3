"""Backfill from channel history, the parts that are not Slack: which reactions in a thread read
from history count (curators' curate and reject emoji), the running tally a backfill reports, and
the fewest Web API calls a channel's history can be read in.

A thread read from history carries its reactions on each message (``reactions``: name, users).
The bot applies what :func:`marks` finds with the same rules and code as live curation
(``bot.curation.CurationService``); refusals are counted here instead of messaged.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

HISTORY_PAGE = 999
"""Messages asked per ``conversations.history`` page: Slack's largest (its docs: limit under
1000). Rate limits count calls, not messages, so the largest page reads a channel in the fewest
calls; Slack may return fewer, and the cursor goes on from there."""

REPLIES_PAGE = 999
"""Messages asked per ``conversations.replies`` page, for the same reason."""


@dataclass(frozen=True)
class ThreadMarks:
    """What curators marked in one thread (or one message without replies)."""

    thread_ts: str
    #: the first curator who put the reject emoji on any message of the thread, if any
    rejected_by: str | None
    #: (message ts, curators in the order Slack lists them) for each message with the curate
    #: emoji from at least one curator, oldest message first
    curated: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def empty(self) -> bool:
        return self.rejected_by is None and not self.curated


def _ts_key(ts: str) -> tuple[int, int]:
    seconds, _, micros = ts.partition(".")
    return int(seconds or 0), int(micros or 0)


def marks(
    thread_ts: str,
    messages: Iterable[dict[str, Any]],
    *,
    curators: frozenset[str],
    curate_emoji: str,
    reject_emoji: str,
) -> ThreadMarks:
    """The curators' curate and reject emoji on ``messages`` (raw Slack messages of one thread,
    as ``conversations.replies`` or ``conversations.history`` return them). Other people's
    reactions are ignored, as live curation ignores them."""
    rejected_by: str | None = None
    curated: dict[str, tuple[str, ...]] = {}
    for message in messages:
        ts = str(message.get("ts") or "")
        for reaction in message.get("reactions") or []:
            name = str(reaction.get("name", "")).split("::")[0]  # skin tones: "+1::skin-tone-2"
            users = [u for u in reaction.get("users") or [] if u in curators]
            if not users or not ts:
                continue
            if name == reject_emoji and rejected_by is None:
                rejected_by = users[0]
            elif name == curate_emoji:
                curated[ts] = tuple(dict.fromkeys([*curated.get(ts, ()), *users]))
    ordered = tuple(sorted(curated.items(), key=lambda item: _ts_key(item[0])))
    return ThreadMarks(thread_ts, rejected_by, ordered)


@dataclass
class Tally:
    """What a backfill did so far; stored with its progress, so a resumed run goes on counting."""

    threads: int = 0  # top-level messages read (each a thread or a lone message)
    messages: int = 0  # messages read, replies included
    curated: int = 0  # examples created (or re-activated)
    already: int = 0  # curator marks that were already examples (live curation, earlier runs)
    refused: Counter[str] = field(default_factory=Counter)  # refusal code -> count
    excluded: int = 0  # threads excluded by a curator's reject emoji
    history_pages: int = 0
    replies_pages: int = 0
    rate_limited: int = 0  # times Slack said to wait (after the client's own retries)
    oldest_read: str = ""  # ts of the oldest top-level message read so far

    @property
    def calls(self) -> int:
        """Web API calls that returned a page (waits for rate limits not included)."""
        return self.history_pages + self.replies_pages

    @property
    def refused_total(self) -> int:
        return sum(self.refused.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "threads": self.threads, "messages": self.messages, "curated": self.curated,
            "already": self.already, "refused": dict(sorted(self.refused.items())),
            "excluded": self.excluded, "history_pages": self.history_pages,
            "replies_pages": self.replies_pages, "rate_limited": self.rate_limited,
            "oldest_read": self.oldest_read,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Tally:
        data = dict(data or {})
        refused = Counter({str(k): int(v) for k, v in (data.pop("refused", None) or {}).items()})
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(refused=refused, **known)


def minimum_calls(
    top_level: int, reply_counts: Iterable[int], *, history_page: int, replies_page: int
) -> int:
    """The fewest ``conversations.history`` + ``conversations.replies`` calls that read a channel
    whose window holds ``top_level`` top-level messages, with these reply counts: the history
    pages (one even for an empty channel), and for each message with replies the pages of its
    thread (the parent comes on the first page). Messages without replies need no call of their
    own: history carries their reactions."""
    history = max(1, math.ceil(top_level / history_page))
    replies = sum(math.ceil((n + 1) / replies_page) for n in reply_counts if n > 0)
    return history + replies


def oldest_ts(days: float | None, now: datetime) -> str:
    """The ``oldest`` bound of a ``days`` window ending ``now`` ("" = all of history)."""
    if days is None:
        return ""
    if days <= 0:
        raise ValueError("days must be more than 0")
    return f"{(now - timedelta(days=days)).timestamp():.6f}"


def fraction_read(oldest_read: str, *, window_start: float, now: float) -> float | None:
    """How much of the window's time span history has been read back through (history comes
    newest first), 0..1; None before the first page. An ETA at the pace so far divides by it."""
    if not oldest_read or now <= window_start:
        return None
    seconds, _, micros = oldest_read.partition(".")
    reached = int(seconds) + int(micros or 0) / 1e6
    return min(1.0, max(0.0, (now - reached) / (now - window_start)))
