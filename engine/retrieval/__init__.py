"""The index of curated examples that grounds answers (issue 13): each current example's question
turns are matched, its curated answer is the context. Hybrid: dense all-MiniLM-L6-v2 vectors plus
lexical BM25, fused by reciprocal rank. Vectors live in the database (``storage.retrieval``), so a
restart rebuilds the in-memory matrix without re-embedding.

How a process uses it: build one :class:`Index` at start (``MiniLMEmbedder(model)`` can share the
SentenceTransformer the semantic cache loaded), call ``index.sync(session=...)`` once (it loads the
stored vectors), then after every curation event and on a timer of a few seconds (a sync that finds
nothing changed is one aggregate query). Record each channel's visibility when curating from it
(``storage.retrieval.record_channel``): an example whose channel was never recorded counts as
private. ``index.search(question, k=..., allowed=...)`` never touches the database."""

from engine.retrieval.embedder import Embedder, MiniLMEmbedder
from engine.retrieval.index import Hit, Index, IndexStats, SyncReport, stored_stats
from engine.retrieval.text import answer_text, question_text

__all__ = ["Embedder", "Hit", "Index", "IndexStats", "MiniLMEmbedder", "SyncReport",
           "answer_text", "question_text", "stored_stats"]
