"""The index of curated examples that grounds answers (issue 13): each current example's question
turns are matched, its curated answer is the context. Hybrid: dense all-MiniLM-L6-v2 vectors plus
lexical BM25, fused by reciprocal rank. Vectors live in the database (``storage.retrieval``), so a
restart rebuilds the in-memory matrix without re-embedding."""

from engine.retrieval.embedder import Embedder, MiniLMEmbedder
from engine.retrieval.index import Hit, Index, IndexStats, SyncReport, stored_stats
from engine.retrieval.text import answer_text, question_text

__all__ = ["Embedder", "Hit", "Index", "IndexStats", "MiniLMEmbedder", "SyncReport",
           "answer_text", "question_text", "stored_stats"]
