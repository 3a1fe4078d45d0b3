"""Where a round's answers come from: a model taking part (:class:`RoundModel`) and the
:class:`AnswerSource` that generates its answers — in a running bot, :class:`BackendAnswers` over
the process's serving backend."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from engine.serving.adapters import AdapterHost, load_once


@dataclass(frozen=True)
class RoundModel:
    """A model taking part in a round: ``adapter_path`` None means the bare base model."""

    name: str
    adapter_path: str | None = None
    checksum: str | None = None


class AnswerSource(Protocol):
    """Generates one answer per conversation (the turns before the answer) with ``model``."""

    def answers(
        self, model: RoundModel, conversations: Sequence[Sequence[dict[str, str]]]
    ) -> list[str]: ...


class BackendAnswers:
    """Answers from a backend that serves the base model and loads adapters.

    The backend is built on first use (loading a model takes seconds) and kept; a model's adapter
    is loaded once under the model's name (:func:`engine.serving.adapters.load_once`: decrypted
    for the moment of loading when stored encrypted, checked against its registered checksum).
    """

    def __init__(
        self,
        backend_factory: Callable[[], AdapterHost],
        *,
        encryption_key: bytes | None = None,
        max_new_tokens: int = 256,
    ) -> None:
        self._factory = backend_factory
        self._backend: AdapterHost | None = None
        self._key = encryption_key
        self.max_new_tokens = max_new_tokens
        self._lock = threading.Lock()

    def backend(self) -> AdapterHost:
        with self._lock:
            if self._backend is None:
                self._backend = self._factory()
            return self._backend

    def answers(
        self, model: RoundModel, conversations: Sequence[Sequence[dict[str, str]]]
    ) -> list[str]:
        backend = self.backend()
        adapter = None
        if model.adapter_path is not None:
            adapter = load_once(backend, model.name, model.adapter_path, key=self._key,
                                checksum=model.checksum)
        generations = backend.generate([list(c) for c in conversations],
                                       max_new_tokens=self.max_new_tokens, adapter=adapter)
        return [g.text for g in generations]


__all__ = ["AnswerSource", "BackendAnswers", "RoundModel"]
