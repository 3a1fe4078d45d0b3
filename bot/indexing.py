"""Keeping the process's index of curated examples (``engine.retrieval.Index``) in step with the
database: after each curation change the bot commits, and on a timer for what other processes
(imports, ``threadtune index rebuild``) change.

Syncs run on the process's work pool and coalesce: at most one runs and one waits, and a sync
starts once curation has been quiet for ``quiet_s`` (at most ``max_wait_s`` after the request).
Measured with ``bench/ingest.py`` (1,000 curations at 100/s): syncing at every event put the
embedding model's load and each sync's BM25 rebuild beside the acknowledgements, and ack p99 went
from 8 ms to 291 ms and stored examples/s halved; a burst now costs one sync after it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy.engine import Engine

from bot.work import ShuttingDown, Workers
from engine.retrieval import Index, SyncReport
from storage.db import session_scope

log = logging.getLogger(__name__)


class IndexSyncer:
    """Schedules ``index.sync`` on ``work``: :meth:`request` returns at once."""

    def __init__(self, db: Engine, index: Callable[[], Index], work: Workers, *,
                 quiet_s: float = 2.0, max_wait_s: float = 20.0) -> None:
        self.db = db
        self.quiet_s, self.max_wait_s = quiet_s, max_wait_s
        self._last_request = 0.0
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
            self._last_request = time.monotonic()
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

    def _settle(self) -> None:
        """Wait until no request came for ``quiet_s`` (at most ``max_wait_s``)."""
        deadline = time.monotonic() + self.max_wait_s
        while True:
            with self._lock:
                quiet_at = self._last_request + self.quiet_s
                now = time.monotonic()
                if now >= quiet_at or now >= deadline:
                    self._pending = False  # the sync about to start sees those requests' changes
                    return
            time.sleep(min(quiet_at, deadline) - now)

    def _run(self) -> None:
        while True:
            self._settle()
            try:
                self.sync_now()
            except Exception:  # noqa: BLE001 — the next request or the timer tries again
                log.exception("could not sync the index of curated examples")
            with self._lock:
                if not self._pending:
                    self._running = False
                    return
                self._pending = False
