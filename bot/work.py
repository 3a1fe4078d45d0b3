"""Slow work started by Slack requests (/ask answers, A/B rounds, evaluations) on a bounded pool.

One :class:`Workers` per process, owned by :class:`bot.services.Services`: at most ``size`` tasks
run at once and the rest wait their turn, so a burst of questions cannot start a thread each.
On shutdown the entry point calls :meth:`Workers.close` (no new work), then :meth:`Workers.wait`
for what is in progress, for a bounded time.

Not ``concurrent.futures.ThreadPoolExecutor``: its threads are joined when the interpreter exits,
so an answer stuck in generation would keep a SIGTERM'd bot alive past its grace period. Our
threads are daemons; the owner of each kind of task closes what did not finish (for /ask,
:meth:`bot.ask.AskService.interrupt_all`) before the process exits.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import wait as wait_all
from typing import Any

log = logging.getLogger(__name__)


class ShuttingDown(RuntimeError):
    """The process is stopping and takes no new work."""


class Workers:
    """At most ``size`` tasks at once on daemon threads (started as needed); more wait in order."""

    def __init__(self, size: int, name: str = "work") -> None:
        if size < 1:
            raise ValueError(f"a worker pool needs at least one thread, got {size}.")
        self.size, self.name = size, name
        self._queue: queue.SimpleQueue[tuple[Future, Callable[..., Any], tuple, dict]] = (
            queue.SimpleQueue()
        )
        self._threads: list[threading.Thread] = []
        self._unfinished: set[Future] = set()
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Queue ``fn(*args, **kwargs)``; raises :class:`ShuttingDown` after :meth:`close`."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise ShuttingDown(f"the {self.name} pool is closed: the process is stopping")
            self._unfinished.add(future)
            if len(self._threads) < self.size:
                thread = threading.Thread(
                    target=self._work, daemon=True, name=f"{self.name}-{len(self._threads) + 1}"
                )
                self._threads.append(thread)
                thread.start()
        future.add_done_callback(self._forget)
        self._queue.put((future, fn, args, kwargs))
        return future

    def close(self) -> None:
        """Take no new work; queued and running tasks go on."""
        with self._lock:
            self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every task submitted so far; True when all
        finished."""
        with self._lock:
            pending = list(self._unfinished)
        _, not_done = wait_all(pending, timeout=timeout)
        return not not_done

    def _forget(self, future: Future) -> None:
        with self._lock:
            self._unfinished.discard(future)

    def _work(self) -> None:
        while True:
            future, fn, args, kwargs = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 — logged here, and kept for whoever waits
                log.exception("a task on the %s pool failed", self.name)
                future.set_exception(exc)
            else:
                future.set_result(result)


RESTARTING = "I'm restarting right now, so I couldn't start that; please try again in a minute."


def start(work: Workers, tell: Callable[[str], Any], fn: Callable[..., Any], /, *args: Any) -> None:
    """Run ``fn(*args)`` on ``work``; when the process is stopping, ``tell`` the person so instead
    of leaving their slash command without an answer."""
    try:
        work.submit(fn, *args)
    except ShuttingDown:
        tell(RESTARTING)
