"""Rate limits: Slack's per-method tiers, answered as Slack answers them (HTTP 429 with
``Retry-After`` in seconds), and the smaller pages Slack gives some apps.

Off by default, so that tests which do not study limits do not wait on them.
:meth:`RateLimits.tiers` turns on Slack's published tiers for every method (per minute, per
app and workspace; Tier 1: 1+, Tier 2: 20+, Tier 3: 50+, Tier 4: 100+; ``chat.postMessage``
about one a second per channel);
:meth:`RateLimits.limit` sets one method's limit over any window (a test's "at most 3 calls a
second"), and its page size: since 2025 commercially distributed apps outside the Marketplace get
1 ``conversations.history`` / ``conversations.replies`` call a minute and 15 messages a page.
Tiers from the method pages on docs.slack.dev.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass

# calls per minute at each tier (Slack says "+": bursts above are tolerated a little)
TIER_PER_MINUTE = {1: 1, 2: 20, 3: 50, 4: 100}

METHOD_TIERS: dict[str, int] = {
    "auth.test": 4,
    "users.info": 4,
    "conversations.info": 3,
    "conversations.members": 4,
    "conversations.history": 3,
    "conversations.replies": 3,
    "conversations.open": 3,
    "conversations.join": 3,
    "chat.postEphemeral": 4,
    "chat.update": 3,
    "chat.delete": 3,
    "chat.getPermalink": 4,
    "assistant.threads.setStatus": 4,
    "assistant.threads.setSuggestedPrompts": 4,
    "assistant.threads.setTitle": 4,
    "reactions.add": 3,
    "reactions.remove": 2,
    "reactions.get": 3,
    "views.publish": 4,
    "views.open": 4,
    "views.push": 4,
    "views.update": 4,
    "files.getUploadURLExternal": 4,
    "files.completeUploadExternal": 4,
}
# chat.postMessage is "special": about one message a second per channel
POST_MESSAGE_PER_SECOND = 1


@dataclass
class Limit:
    """At most ``calls`` in any ``window_s`` seconds (per channel when ``per_channel``);
    ``max_page``: the most items one page holds, whatever ``limit`` the app asks for."""

    calls: int | None = None
    window_s: float = 60.0
    max_page: int | None = None
    per_channel: bool = False


class RateLimits:
    """Which calls Slack would refuse now. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._limits: dict[str, Limit] = {}
        self._tiers = False
        self._seen: dict[tuple[str, str], deque[float]] = {}
        self.refused: dict[str, int] = {}  # method -> 429s answered

    def tiers(self, enabled: bool = True) -> dict:
        """Slack's tiers for every method (methods given :meth:`limit` keep theirs)."""
        with self._lock:
            self._tiers = enabled
        return {"tiers": enabled}

    def limit(
        self,
        method: str,
        calls: int | None = None,
        window_s: float = 60.0,
        max_page: int | None = None,
        per_channel: bool = False,
    ) -> dict:
        """Limit one method: ``calls`` per ``window_s`` (None: no call limit), pages of at most
        ``max_page`` items."""
        if calls is not None and calls < 1:
            raise ValueError("calls must be at least 1")
        with self._lock:
            self._limits[method] = Limit(calls, float(window_s), max_page, per_channel)
            self._seen = {k: v for k, v in self._seen.items() if k[0] != method}
        return {"method": method, "calls": calls, "window_s": window_s, "max_page": max_page}

    def clear(self) -> dict:
        with self._lock:
            self._limits.clear()
            self._seen.clear()
            self._tiers = False
            self.refused.clear()
        return {}

    def _limit_for(self, method: str) -> Limit | None:
        if method in self._limits:
            return self._limits[method]
        if not self._tiers:
            return None
        if method == "chat.postMessage":
            return Limit(POST_MESSAGE_PER_SECOND, 1.0, per_channel=True)
        tier = METHOD_TIERS.get(method)
        return Limit(TIER_PER_MINUTE[tier], 60.0) if tier else None

    def max_page(self, method: str) -> int | None:
        with self._lock:
            limit = self._limit_for(method)
            return limit.max_page if limit else None

    def take(self, method: str, channel: str = "") -> int | None:
        """Count one call; None when it may go through, else the ``Retry-After`` seconds (a
        refused call does not count, as with Slack)."""
        now = time.monotonic()
        with self._lock:
            limit = self._limit_for(method)
            if limit is None or limit.calls is None:
                return None
            key = (method, channel if limit.per_channel else "")
            seen = self._seen.setdefault(key, deque())
            while seen and seen[0] <= now - limit.window_s:
                seen.popleft()
            if len(seen) >= limit.calls:
                self.refused[method] = self.refused.get(method, 0) + 1
                return max(1, math.ceil(seen[0] + limit.window_s - now))
            seen.append(now)
            return None
