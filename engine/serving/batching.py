"""Answer questions that arrive together in one batch: :class:`BatchingBackend`.

The in-process backend generates one call at a time (a lock), so sixteen people asking at once
wait for fifteen answers each before theirs starts — yet one batched ``generate`` of eight prompts
costs little more than one prompt (``bench/eval.py``, sixteen prompts: 3.1–4.2× the answers
per second). The wrapper queues single-prompt calls and a worker thread hands the backend
everything waiting with the same adapter and token limit, up to ``max_batch`` at once. A question
asked alone starts at once: there is no collection window, batches form only from what queued
while the previous batch ran.

vLLM batches on the server, so its client is used as it is.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from engine.serving.base import Generation, Message, ModelBackend


@dataclass
class _Pending:
    prompt: Sequence[Message]
    max_new_tokens: int
    adapter: str | None
    answer: Future[Generation] = field(default_factory=Future)

    @property
    def key(self) -> tuple[str | None, int]:
        return self.adapter, self.max_new_tokens


class BatchingBackend:
    """``backend`` with concurrent single-prompt ``generate`` calls answered in shared batches.
    Everything else (adapters, loading, names) is the wrapped backend's."""

    def __init__(self, backend: ModelBackend, max_batch: int = 8) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}.")
        self.backend, self.max_batch = backend, max_batch
        self._queue: deque[_Pending] = deque()
        self._wake = threading.Condition()
        self._worker: threading.Thread | None = None
        self.batches: list[int] = []  # sizes of the batches run, newest last (kept short)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    def generate(self, prompts: Sequence[Sequence[Message]], *, max_new_tokens: int = 256,
                 adapter: str | None = None) -> list[Generation]:
        if len(prompts) != 1:  # already a batch: nothing to gain from waiting for others
            return self.backend.generate(prompts, max_new_tokens=max_new_tokens, adapter=adapter)
        pending = _Pending(prompts[0], max_new_tokens, adapter)
        with self._wake:
            self._queue.append(pending)
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._work, name="batching-backend", daemon=True
                )
                self._worker.start()
            self._wake.notify()
        return [pending.answer.result()]

    def _next_batch(self) -> list[_Pending]:
        """The oldest waiting call and the others that can share its batch (oldest first)."""
        with self._wake:
            while not self._queue:
                self._wake.wait()
            key = self._queue[0].key
            batch = [p for p in self._queue if p.key == key][: self.max_batch]
            for p in batch:
                self._queue.remove(p)
            return batch

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            adapter, max_new_tokens = batch[0].key
            self.batches = (self.batches + [len(batch)])[-100:]
            try:
                results = self.backend.generate(
                    [p.prompt for p in batch], max_new_tokens=max_new_tokens, adapter=adapter
                )
            except BaseException as exc:  # noqa: BLE001 - every caller in the batch hears it
                for p in batch:
                    p.answer.set_exception(exc)
            else:
                for p, result in zip(batch, results, strict=True):
                    p.answer.set_result(result)
