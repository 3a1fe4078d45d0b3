"""Forgetting from Slack: a deleted message or an excluded thread removes its content from every
copy threadtune keeps (``engine.forget``). Curation deletes the examples in the event's own
transaction; this runs the rest — snapshot files, run folders, other rows, models marked, the
database files compacted — on the work pool, logs the report (never the text), and then brings
the bot's index and answer cache in step."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path

from sqlalchemy.engine import Engine

from bot.work import Workers
from engine.forget import Needles, forget

log = logging.getLogger(__name__)


class SlackForgetter:
    """``forgetter(what, texts)``: forget ``texts`` everywhere, in the background."""

    def __init__(
        self,
        db: Engine,
        home: Path,
        work: Workers,
        after: Sequence[Callable[[], None]] = (),
    ) -> None:
        self.db, self.home, self.work = db, home, work
        self.after = list(after)

    def __call__(self, what: str, texts: Sequence[str]) -> Future | None:
        if not Needles(texts):
            return None
        return self.work.submit(self._run, what, list(texts))

    def _run(self, what: str, texts: list[str]) -> None:
        try:
            report = forget(self.db, self.home, what=what, texts=texts)
        except Exception:
            log.exception("forgetting %s failed; run `threadtune forget` to finish", what)
            return
        for line in report.lines():
            log.info("forget: %s", line)
        for step in self.after:
            step()
