"""The lexical half of the index: BM25 (``bm25s``) over the examples' question turns. It finds what
embeddings blur: an error code, a flag name, a ticket number."""

from __future__ import annotations

import numpy as np


def tokenize(texts: list[str]) -> list[list[str]]:
    """Each text's lower-cased word tokens without English stopwords, as bm25s splits them."""
    import bm25s

    if not texts:
        return []
    return bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)


class Lexical:
    """A BM25 index of pre-tokenised documents, rows in the order given."""

    def __init__(self, documents: list[list[str]]) -> None:
        import bm25s

        self._bm25 = bm25s.BM25()
        self._bm25.index(documents, show_progress=False)
        self._size = len(documents)

    def scores(self, tokens: list[str]) -> np.ndarray | None:
        """BM25 score of every row for the query ``tokens``; None when no token is indexed."""
        known = [t for t in tokens if t in self._bm25.vocab_dict]
        if not known:
            return None
        return np.asarray(self._bm25.get_scores(known), dtype=np.float32)
