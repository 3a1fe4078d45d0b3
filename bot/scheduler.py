"""The bot's scheduler: APScheduler 3's ``BackgroundScheduler`` with a small surface.

Deadlines live in the database, not in the scheduler (its job store is in memory): at start the
owner of each kind of deadline re-arms its jobs from the database, and a deadline that passed
while the bot was down runs at once (``misfire_grace_time=None``: a late job always runs).
``start_ab_deadlines`` does that for A/B rounds and adds a once-a-minute sweep as a safety net.

Built by the entry point (``threadtune serve``), never at import time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

log = logging.getLogger(__name__)

SWEEP_SECONDS = 60


class BotScheduler:
    """Named one-off and repeating jobs on a background thread pool."""

    def __init__(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        self._scheduler = BackgroundScheduler(
            timezone=UTC,
            daemon=True,
            # a job whose time passed (bot busy or asleep) still runs, once
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1},
        )

    def start(self) -> BotScheduler:
        if not self._scheduler.running:
            self._scheduler.start()
        return self

    def shutdown(self, wait: bool = False) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=wait)

    @property
    def running(self) -> bool:
        return bool(self._scheduler.running)

    def at(self, job_id: str, when: datetime, func: Callable[..., Any], *args: Any) -> None:
        """Run ``func(*args)`` once at ``when`` (aware; a past time runs at once), replacing any
        job of the same id."""
        if when.tzinfo is None:
            raise ValueError(f"naive datetime {when!r}: pass a timezone-aware one")
        self._scheduler.add_job(func, "date", run_date=when, args=args, id=job_id,
                                replace_existing=True, name=job_id)

    def every(self, job_id: str, seconds: float, func: Callable[..., Any], *args: Any) -> None:
        self._scheduler.add_job(func, "interval", seconds=seconds, args=args, id=job_id,
                                replace_existing=True, name=job_id)

    def cancel(self, job_id: str) -> bool:
        """Drop a job; False when there was none (it ran already, or never existed)."""
        from apscheduler.jobstores.base import JobLookupError

        try:
            self._scheduler.remove_job(job_id)
        except JobLookupError:
            return False
        return True

    def next_run(self, job_id: str) -> datetime | None:
        job = self._scheduler.get_job(job_id)
        return job.next_run_time if job is not None else None


class DeadlineOwner(Protocol):
    """What owns a kind of deadline (``bot.ab_rounds.ABRoundService``): the scheduler it arms
    jobs on, re-arming from the database, and a sweep for whatever is due."""

    scheduler: BotScheduler | None

    def rearm(self) -> int: ...

    def close_due(self) -> int: ...


def start_ab_deadlines(scheduler: BotScheduler, rounds: DeadlineOwner) -> int:
    """Arm every open round's deadline from the database (overdue ones close at once) and sweep
    for due rounds every minute; returns the number of rounds armed."""
    scheduler.start()
    rounds.scheduler = scheduler
    armed = rounds.rearm()
    scheduler.every("ab-sweep", SWEEP_SECONDS, rounds.close_due)
    log.info("scheduler started: %d open A/B round deadline(s) armed", armed)
    return armed
