"""Who may see what came from a channel: channel membership and privacy, as Slack says, cached
briefly.

Used wherever the bot shows something from one channel to a person elsewhere (the Home tab's
Unanswered list; answers grounded in private-channel examples). Every doubt hides: when Slack
cannot say whether a channel is private it counts as private, and when it cannot list a channel's
members nobody counts as one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.slack_api import explain

log = logging.getLogger(__name__)

TTL_S = 60.0
"""How long an answer from Slack is reused: membership changes (someone joins or leaves) show
within a minute, and a Home tab listing 20 questions from 5 channels costs 5 calls, not 20."""
FAILURE_TTL_S = 5.0
"""A failed call is retried sooner: until then its answer (hide) stands."""


class ChannelAccess:
    """``is_member`` (conversations.members) and ``is_private`` (conversations.info), each answer
    cached for ``ttl_s`` seconds. Safe to share between threads."""

    def __init__(
        self,
        client: WebClient,
        *,
        ttl_s: float = TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self._clock = clock
        self._members: dict[str, tuple[float, frozenset[str] | None]] = {}
        self._private: dict[str, tuple[float, bool | None]] = {}
        self._lock = threading.Lock()

    def is_member(self, user: str, channel: str) -> bool:
        """Whether ``user`` is in ``channel`` now (within ``ttl_s``); False when Slack can't say."""
        members = self.members(channel)
        return members is not None and user in members

    def members(self, channel: str) -> frozenset[str] | None:
        """Everyone in ``channel``; None when Slack could not list them."""
        cached = self._cached(self._members, channel)
        if cached is not _MISS:
            return cached  # type: ignore[return-value]
        members: frozenset[str] | None
        try:
            found: set[str] = set()
            cursor = None
            while True:
                page = self.client.conversations_members(channel=channel, cursor=cursor, limit=1000)
                found.update(page.get("members") or [])
                cursor = (page.get("response_metadata") or {}).get("next_cursor")
                if not cursor:
                    break
            members = frozenset(found)
        except SlackApiError as exc:
            log.warning(
                "could not list the members of %s: %s; treating nobody as one",
                channel,
                explain(exc),
            )
            members = None
        self._store(self._members, channel, members)
        return members

    def is_private(self, channel: str) -> bool | None:
        """Whether ``channel`` is private (a DM or group DM counts as private); None when Slack
        could not say, which callers must treat as private."""
        cached = self._cached(self._private, channel)
        if cached is not _MISS:
            return cached  # type: ignore[return-value]
        private: bool | None
        try:
            info = self.client.conversations_info(channel=channel).get("channel") or {}
            private = bool(info.get("is_private", True) or info.get("is_im") or info.get("is_mpim"))
        except SlackApiError as exc:
            log.warning("could not read whether %s is private: %s", channel, explain(exc))
            private = None
        self._store(self._private, channel, private)
        return private

    def forget(self, channel: str | None = None) -> None:
        """Drop what is cached (for ``channel``, or everything)."""
        with self._lock:
            for cache in (self._members, self._private):
                if channel is None:
                    cache.clear()
                else:
                    cache.pop(channel, None)

    def _cached(self, cache: dict, channel: str) -> object:
        with self._lock:
            entry = cache.get(channel)
        if entry is None or self._clock() >= entry[0]:
            return _MISS
        return entry[1]

    def _store(self, cache: dict, channel: str, value: object) -> None:
        with self._lock:
            ttl = self.ttl_s if value is not None else min(self.ttl_s, FAILURE_TTL_S)
            cache[channel] = (self._clock() + ttl, value)


_MISS = object()
