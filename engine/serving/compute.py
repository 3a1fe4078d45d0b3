"""One thread for all of a process's model work: :data:`COMPUTE`.

On the CPU, PyTorch's OpenMP runtime keeps a team of worker threads for each Python thread that
runs tensor work. Once two Python threads have both run a model in one process — /ask's question
embedding on the request thread and the answer's generation on the batching thread — every later
generation is slower, on whichever thread it runs (measured on 2-core machines: 8–19% on one, 65%
on another, in ``bench/ask.py`` and in a small script alternating an embedding and a generation).
Keeping every model call of the process on one thread avoids it, so the
in-process backend (loading, generation, scoring, adapters), the embedding model and the base-model
conversion all go through :meth:`ComputeThread.run`.

One thread also means one call at a time. Short calls that a user is waiting on (a question's
embedding for the semantic cache) are marked ``urgent``: they run before queued long ones and, while
a long call runs, at its :meth:`ComputeThread.yield_point` — the in-process backend yields after
every generated token and every scored batch — so a cache lookup waits a token, not an answer.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from typing import Any, TypeVar

T = TypeVar("T")


class _Task(Future):
    """A call waiting for the compute thread; its caller waits on the future."""

    def __init__(self, call: Callable[[], Any]) -> None:
        super().__init__()
        self.call = call

    def run(self) -> None:
        try:
            self.set_result(self.call())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, who re-raises it
            self.set_exception(exc)


class ComputeThread:
    """Runs callables on one daemon thread (started on first use), urgent ones first."""

    def __init__(self, name: str = "model-compute") -> None:
        self.name = name
        self._urgent: deque[_Task] = deque()
        self._queued: deque[_Task] = deque()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def on_thread(self) -> bool:
        """Whether the caller is this compute thread."""
        return self._thread is not None and threading.current_thread() is self._thread

    def run(self, fn: Callable[..., T], /, *args: Any, urgent: bool = False, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on the compute thread; its result or its exception here.

        Called on the compute thread itself (a model call inside another), it runs at once."""
        if self.on_thread():
            return fn(*args, **kwargs)
        task = _Task(partial(fn, *args, **kwargs))
        with self._wake:
            (self._urgent if urgent else self._queued).append(task)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                self._thread.start()
            self._wake.notify()
        return task.result()

    def yield_point(self) -> None:
        """Run the urgent calls waiting now; long calls invoke this between their steps."""
        if not self.on_thread():
            return
        while True:
            with self._wake:
                if not self._urgent:
                    return
                task = self._urgent.popleft()
            task.run()

    def _work(self) -> None:
        while True:
            with self._wake:
                while not (self._urgent or self._queued):
                    self._wake.wait()
                task = (self._urgent or self._queued).popleft()
            task.run()


COMPUTE = ComputeThread()
"""The process's compute thread (see the module docstring)."""


__all__ = ["COMPUTE", "ComputeThread"]
