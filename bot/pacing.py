"""Pacing Slack calls: Slack allows about one ``chat.postMessage`` a second per channel, and a
message updated on every click would hit ``chat.update``'s limits during a burst of votes.

:class:`ChannelPacer` spaces posts per channel; :class:`Coalescer` merges bursts of updates of one
message into at most one call a second that reads the latest state. (Not to be confused with
``engine.jobs.progress.Throttle``, which only answers whether a progress update is due.)
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class ChannelPacer:
    """At most one message per ``interval`` seconds per channel (Slack's chat.postMessage limit)."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def run(self, channel: str, fn: Callable[[], Any]) -> Any:
        with self._guard:
            lock = self._locks.setdefault(channel, threading.Lock())
        with lock:
            wait = self._last.get(channel, -math.inf) + self.interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                return fn()
            finally:
                self._last[channel] = time.monotonic()


class Coalescer:
    """Runs ``fn`` for a key at most once per ``interval`` seconds; calls in between are merged
    into one deferred call. ``fn`` reads the current state when it runs, so the last run always
    shows the latest votes. Runs for one key never overlap, and the interval counts from the end
    of the previous run — when Slack has seen its call — so a slow run does not shorten the gap."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._last: dict[Any, float] = {}
        self._pending: set[Any] = set()
        self._running: dict[Any, threading.Lock] = {}
        self._guard = threading.Lock()

    def call(self, key: Any, fn: Callable[[], Any]) -> None:
        with self._guard:
            if key in self._pending:
                return  # a deferred run is coming and will read the state then
            wait = self._due(key)
            if wait > 0:
                self._pending.add(key)
                self._later(wait, key, fn)
                return
            self._last[key] = time.monotonic()  # claims the slot: calls until it ends are deferred
            lock = self._running.setdefault(key, threading.Lock())
        with lock:
            self._invoke(key, fn)

    def _deferred(self, key: Any, fn: Callable[[], Any]) -> None:
        with self._guard:
            lock = self._running.setdefault(key, threading.Lock())
        with lock:  # after a run in progress has ended
            with self._guard:
                wait = self._due(key)
                if wait > 0:  # the previous run ended later than planned: keep the gap
                    self._later(wait, key, fn)
                    return
                self._pending.discard(key)
                self._last[key] = time.monotonic()
            self._invoke(key, fn)

    def _invoke(self, key: Any, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception:  # a failed refresh must not break the vote that asked for it
            log.exception("coalesced call for %s failed", key)
        finally:
            with self._guard:
                self._last[key] = time.monotonic()

    def _due(self, key: Any) -> float:
        return self._last.get(key, -math.inf) + self.interval - time.monotonic()

    def _later(self, wait: float, key: Any, fn: Callable[[], Any]) -> None:
        timer = threading.Timer(wait, self._deferred, (key, fn))
        timer.daemon = True
        timer.start()
