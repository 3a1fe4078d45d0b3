"""Pure helpers for showing a job's progress: a rate limit for updates and ETA arithmetic.

Slack allows about one ``chat.update`` a second per message, and a training step can take a few
milliseconds, so whoever shows progress asks a ``Throttle`` before each update; the final update
(job finished, failed, cancelled) always goes through, so the last thing shown is the truth.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class Throttle:
    """At most one update per ``interval_s`` seconds; ``final=True`` always passes.

    ``clock`` is injectable (monotonic seconds) so the behaviour is testable without sleeping.
    Not thread-safe on its own: keep one per job and call it from the thread that updates.
    """

    def __init__(
        self, interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if interval_s < 0:
            raise ValueError(f"interval_s must be zero or more, not {interval_s}")
        self.interval_s = interval_s
        self.clock = clock
        self._last: float | None = None
        self.skipped = 0  # updates refused since the last one let through

    def ready(self, *, final: bool = False) -> bool:
        """True when an update may go out now (and counts it as sent)."""
        now = self.clock()
        if final or self._last is None or now - self._last >= self.interval_s:
            self._last = now
            self.skipped = 0
            return True
        self.skipped += 1
        return False


def eta_seconds(
    *, elapsed_s: float, step: int, total_steps: int, first_step: int = 0
) -> float | None:
    """Seconds left at this attempt's pace: ``step`` of ``total_steps`` reached after
    ``elapsed_s`` seconds of an attempt that started at ``first_step`` (the step resumed from,
    0 for a fresh run — restored steps took no time here). None while there is no pace yet."""
    done = step - first_step
    if done <= 0 or total_steps <= 0 or elapsed_s < 0:
        return None
    return elapsed_s / done * max(total_steps - step, 0)


def format_eta(seconds: float | None) -> str:
    """``None`` → "unknown"; otherwise a short English duration rounded to what matters:
    "45 s", "3 min 20 s", "1 h 05 min", "2 d 3 h"."""
    if seconds is None or math.isnan(seconds) or seconds < 0:
        return "unknown"
    if math.isinf(seconds):
        return "unknown"
    total = int(round(seconds))
    if total < 60:
        return f"{total} s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"
