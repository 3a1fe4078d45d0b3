"""Keeping the process's index of curated examples (``engine.retrieval.Index``) in step with the
database: after each curation change the bot commits, and on a timer for what other processes
(imports, ``threadtune index rebuild``) change.

Syncs run on the process's work pool and coalesce: at most one runs and one waits, so a burst of
curation events costs at most two syncs, the last of which sees every change of the burst.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy.engine import Engine

from bot.work import ShuttingDown, Workers
from engine.retrieval import Index, SyncReport
from storage.db import session_scope

log = logging.getLogger(__name__)


class IndexSyncer:
    """Schedules ``index.sync`` on ``work``: :meth:`request` returns at once."""

    def __init__(self, db: Engine, index: Callable[[], Index], work: Workers) -> None:
        self.db = db
        self._index = index  # built on first use: the embedding model loads with the first sync
        self.work = work
        self._lock = threading.Lock()
        self._running = False
        self._pending = False
        self.syncs = 0  # syncs run so far (tests count them)

    def request(self) -> None:
        """Ask for a sync: one starts now unless one is running, in which case one more runs
        after it (however many requests arrive meanwhile)."""
        with self._lock:
            if self._running:
                self._pending = True
                return
            self._running = True
        try:
            self.work.submit(self._run)
        except ShuttingDown:
            with self._lock:
                self._running = self._pending = False

    def sync_now(self) -> SyncReport:
        """Sync on the calling thread (start up, tests)."""
        with session_scope(self.db) as session:
            report = self._index().sync(session=session)
        self.syncs += 1
        if report.changed:
            log.info("index synced: %d examples (%d added, %d updated, %d removed, %d embedded) "
                     "in %.2f s", report.examples, report.added, report.updated, report.removed,
                     report.embedded, report.seconds)
        return report

    def _run(self) -> None:
        while True:
            try:
                self.sync_now()
            except Exception:  # noqa: BLE001 — the next request or the timer tries again
                log.exception("could not sync the index of curated examples")
            with self._lock:
                if not self._pending:
                    self._running = False
                    return
                self._pending = False
