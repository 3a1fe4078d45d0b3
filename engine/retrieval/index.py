"""The in-memory index of curated examples, kept in step with the database.

A :class:`Index` holds one immutable snapshot — the examples' question vectors as a matrix, a BM25
index of the same questions, and what a hit carries — and replaces it whole when :meth:`Index.sync`
finds that curation changed something. A search reads the snapshot once, so a search running during
a sync sees the old index or the new one, never a mix.

Vectors are stored in the database (``storage.retrieval``) with the model that made them and a hash
of the text embedded; a new process rebuilds its matrix from those rows and embeds only examples
that are new or whose question text changed.

Privacy: an example is ``private`` when Slack said its channel is private
(``storage.retrieval.record_channel``) or when nothing was recorded for its channel — an unknown
channel is treated as private, so that a missing record can only hide an example, never show it to
someone who may not see it. Imported examples (no Slack channel) are not private. An answer a
curator wrote from the Unanswered list (``source == "answered"``) is private only when its channel
is recorded as private: its question may come from a DM or the assistant pane, and the bot records
a channel's visibility before it stores an answer to a question asked there.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlmodel import Session

from engine.curation import ANSWERED_SOURCE
from engine.retrieval.embedder import MINILM, Embedder, MiniLMEmbedder
from engine.retrieval.lexical import Lexical, tokenize
from engine.retrieval.text import answer_text, question_text, text_hash
from engine.serving.compute import COMPUTE
from storage import retrieval as q
from storage.models import utcnow

RRF_K = 60
"""Reciprocal rank fusion's constant: an example at rank r of a list adds 1 / (RRF_K + r)."""
CANDIDATES = 50
"""How deep each list (dense, lexical) is read before fusing; deeper when ``allowed`` filters."""
IMPORT_SOURCE = "import"
_REDACTED = re.compile(r"\[[A-Z_]+\]")  # a redaction placeholder: [EMAIL], [API_KEY]…


@dataclass(frozen=True)
class Hit:
    """One retrieved example.

    ``score`` is the reciprocal-rank-fusion score divided by its largest possible value (rank 1
    in both the dense and the lexical list), so it lies in (0, 1]; it orders hits but is not a
    similarity. ``dense`` is the cosine similarity of the query to the example's question turns
    (-1..1, in practice 0..1): thresholds ("is anything curated close enough?") belong on it."""

    example_id: int
    channel: str  # Slack channel id the example was curated in
    thread_ts: str  # the thread parent's ts
    private: bool  # curated in a private channel (or one whose visibility is unknown)
    question: str  # the example's user turns, joined
    answer: str  # the curated answer (the assistant turns after the last user turn)
    score: float
    dense: float
    rank: int  # 1-based, after fusion and after ``allowed``


@dataclass(frozen=True)
class SyncReport:
    """What one :meth:`Index.sync` or :meth:`Index.rebuild` did."""

    changed: bool  # False: curation had not changed since the last sync, nothing was read
    added: int = 0
    updated: int = 0
    removed: int = 0
    embedded: int = 0  # examples embedded now
    reused: int = 0  # examples whose stored vector was still right
    skipped: int = 0  # current examples with no question or no answer to index
    examples: int = 0  # examples searchable after the sync
    seconds: float = 0.0


@dataclass(frozen=True)
class IndexStats:
    examples: int  # examples indexed (searchable)
    model: str
    dimension: int
    last_sync: datetime | None  # in-memory index: its last sync; stored: the newest vector written
    pending: int = 0  # current examples without a stored vector (stored figures only)


@dataclass(frozen=True)
class _Entry:
    example_id: int
    channel: str
    thread_ts: str
    source: str
    question: str
    answer: str
    vector: np.ndarray
    tokens: list[str]


def _private(entry: _Entry, visibility: dict[str, bool]) -> bool:
    """Imports are public; an answer a curator wrote from the Unanswered list is private only
    when its question came from a channel Slack said is private (a question from a DM or the
    assistant pane was answered for the team, and the bot records the channel's visibility before
    it stores such an answer); any other example is private unless its channel is known public."""
    if entry.source == IMPORT_SOURCE:
        return False
    if entry.source == ANSWERED_SOURCE:
        return visibility.get(entry.channel, False)
    return visibility.get(entry.channel, True)


class _Snapshot:
    """Everything one search reads; never changed after it is built."""

    def __init__(self, entries: list[_Entry], visibility: dict[str, bool], dimension: int) -> None:
        import torch

        self.entries = entries
        self.private = [_private(e, visibility) for e in entries]
        self.private_channels = frozenset(
            e.channel for e, private in zip(entries, self.private, strict=True) if private
        )
        # half precision: half the memory and, on the CPU, half the time of a float32 product
        # (memory-bound: 50,000 x 384 is 38 MB instead of 77); cosines move by about 1e-3
        matrix = (np.stack([e.vector for e in entries]) if entries
                  else np.zeros((0, dimension), dtype=np.float32))
        self.matrix = torch.from_numpy(matrix).to(torch.float16)
        self.lexical = Lexical([e.tokens for e in entries]) if entries else None

    def cosines(self, vector: np.ndarray) -> np.ndarray:
        """The query's cosine with every row. A torch product, so it runs on the compute thread
        (see ``engine.serving.compute``), called from there."""
        import torch

        query = torch.from_numpy(np.ascontiguousarray(vector, dtype=np.float32)).to(torch.float16)
        return (self.matrix @ query).to(torch.float32).numpy()

    def __len__(self) -> int:
        return len(self.entries)

    def hit(self, row: int, score: float, dense: float, rank: int) -> Hit:
        e = self.entries[row]
        return Hit(example_id=e.example_id, channel=e.channel, thread_ts=e.thread_ts,
                   private=self.private[row], question=e.question, answer=e.answer,
                   score=score, dense=dense, rank=rank)


def _top(scores: np.ndarray, depth: int) -> np.ndarray:
    """Rows of the ``depth`` highest scores, best first (ties: lower row first)."""
    if depth >= len(scores):
        return np.argsort(-scores, kind="stable")
    part = np.argpartition(-scores, depth - 1)[:depth]
    return part[np.lexsort((part, -scores[part]))]


def fuse(dense: np.ndarray, lexical: np.ndarray | None, depth: int) -> list[tuple[int, float]]:
    """Reciprocal rank fusion of the ``depth`` best rows by cosine and by BM25 (rows BM25 scores
    0 are not in its list). Returns (row, normalised score), best first."""
    fused: dict[int, float] = {}
    for rank, row in enumerate(_top(dense, depth), 1):
        fused[int(row)] = 1.0 / (RRF_K + rank)
    if lexical is not None:
        for rank, row in enumerate(_top(lexical, depth), 1):
            if lexical[row] <= 0:
                break
            fused[int(row)] = fused.get(int(row), 0.0) + 1.0 / (RRF_K + rank)
    best = 2.0 / (RRF_K + 1)
    order = sorted(fused.items(), key=lambda item: (-item[1], -dense[item[0]], item[0]))
    return [(row, score / best) for row, score in order]


class Index:
    """Hybrid search over the current curated examples.

    ``sync`` is cheap when nothing changed (one aggregate query), so the bot can call it after each
    curation event and on a timer. ``search`` never touches the database."""

    def __init__(self, embedder: Embedder | None = None) -> None:
        self.embedder: Embedder = embedder or MiniLMEmbedder()
        self._snapshot = _Snapshot([], {}, self.embedder.dimension)
        self._entries: dict[int, _Entry] = {}
        self._versions: dict[int, datetime] = {}  # example id → updated_at seen at the last sync
        self._fingerprint: tuple | None = None
        self._sync_lock = threading.Lock()
        self._last_sync: datetime | None = None
        self._version = 0

    @property
    def version(self) -> int:
        """Bumped each time what can be retrieved changes (0: never synced with changes). Answer
        caches key on it, so an edited or withdrawn example is never served from a cache."""
        return self._version

    def private_channels(self) -> frozenset[str]:
        """Channels whose indexed examples are private (who may see them is decided per asker)."""
        return self._snapshot.private_channels  # computed once per sync, read per question

    def suggestions(self, n: int, *, max_chars: int = 120) -> list[str]:
        """Up to ``n`` questions of public examples, newest first, one line each and at most
        ``max_chars`` long (suggested prompts for people who don't know what to ask)."""
        snap = self._snapshot
        out: list[str] = []
        seen: set[str] = set()
        for entry, private in zip(reversed(snap.entries), reversed(snap.private), strict=True):
            question = " ".join(entry.question.split())
            if (private or not question or len(question) > max_chars
                    or question.lower() in seen or _REDACTED.search(question)):
                continue  # a suggestion with "[EMAIL]" in it reads as broken
            seen.add(question.lower())
            out.append(question)
            if len(out) == n:
                break
        return out

    # -- searching ---------------------------------------------------------------------------

    def search(self, query: str, *, k: int = 5, allowed: Callable[[Hit], bool] | None = None,
               vector: np.ndarray | None = None) -> list[Hit]:
        """The ``k`` best examples for ``query`` that ``allowed`` accepts (all when None).

        ``vector``: the query's embedding by this index's model when the caller has it already
        (the semantic cache embeds every question), so that it is not computed twice."""
        snap = self._snapshot
        if not len(snap) or k <= 0 or not query.strip():
            return []
        # one urgent call on the compute thread: the query's embedding and the product with the
        # matrix, between two generated tokens at worst
        dense = COMPUTE.run(self._cosines, snap, query, vector, urgent=True)
        lexical = snap.lexical.scores(tokenize([query])[0]) if snap.lexical is not None else None
        depth = min(len(snap), max(CANDIDATES, 4 * k))
        while True:
            hits: list[Hit] = []
            for row, score in fuse(dense, lexical, depth):
                hit = snap.hit(row, score, float(dense[row]), len(hits) + 1)
                if allowed is None or allowed(hit):
                    hits.append(hit)
                    if len(hits) == k:
                        return hits
            if depth >= len(snap):
                return hits
            depth = min(len(snap), depth * 4)

    def _cosines(self, snap: _Snapshot, query: str, vector: np.ndarray | None) -> np.ndarray:
        if vector is None:
            vector = self.embedder.embed([query], urgent=True)[0]
        return snap.cosines(vector)

    # -- following curation ------------------------------------------------------------------

    def sync(self, *, session: Session) -> SyncReport:
        """Bring the index in step with curation: embed new and edited examples (reusing stored
        vectors whose text is unchanged), drop withdrawn, deleted and excluded ones. Writes vectors
        through ``session``; the caller commits."""
        with self._sync_lock:
            return self._sync(session, rebuild=False)

    def rebuild(self, *, session: Session) -> SyncReport:
        """Forget every stored vector and embed every current example again (repair)."""
        with self._sync_lock:
            return self._sync(session, rebuild=True)

    def stats(self) -> IndexStats:
        return IndexStats(examples=len(self._snapshot), model=self.embedder.name,
                          dimension=self.embedder.dimension, last_sync=self._last_sync)

    def _sync(self, session: Session, *, rebuild: bool) -> SyncReport:
        started = time.perf_counter()
        fingerprint = q.curation_fingerprint(session=session)
        if not rebuild and fingerprint == self._fingerprint:
            self._last_sync = utcnow()
            return SyncReport(changed=False, examples=len(self._snapshot))
        if rebuild:
            q.drop_all_vectors(session=session)
        known = {} if rebuild else self._versions
        entries = {} if rebuild else dict(self._entries)
        versions = q.current_versions(session=session)
        visibility = q.channel_visibility(session=session)
        gone = [i for i in entries if i not in versions]
        for example_id in gone:
            del entries[example_id]
        changed_ids = [i for i, seen in versions.items() if known.get(i) != seen]
        stored = q.vectors_for(session=session, ids=changed_ids)
        model, dimension = self.embedder.name, self.embedder.dimension
        fresh: list[tuple[int, _Entry]] = []  # entries still needing their vector
        reused = skipped = added = updated = 0
        examples = q.example_texts(session=session, ids=changed_ids)
        questions = [question_text(e.messages) for e in examples]
        for example, question, tokens in zip(examples, questions, tokenize(questions), strict=True):
            answer = answer_text(example.messages)
            if not question or not answer:
                entries.pop(example.id, None)
                skipped += 1
                continue
            if example.id in entries:
                updated += 1
            else:
                added += 1
            digest = text_hash(model, question)
            row = stored.get(example.id)
            entry = _Entry(example.id, example.channel, example.thread_ts, example.source,
                           question, answer, np.zeros(0, dtype=np.float32), tokens)
            if row is not None and (row.text_hash, row.model, row.dimension) == (
                digest,
                model,
                dimension,
            ):
                entries[example.id] = _with_vector(entry, np.frombuffer(row.vector, dtype="<f4"))
                reused += 1
            else:
                fresh.append((example.id, entry))
        vectors = self.embedder.embed([e.question for _, e in fresh])
        q.save_vectors(
            session=session,
            rows=[
                {
                    "example_id": example_id,
                    "model": model,
                    "dimension": dimension,
                    "text_hash": text_hash(model, entry.question),
                    "vector": vector.astype("<f4").tobytes(),
                }
                for (example_id, entry), vector in zip(fresh, vectors, strict=True)
            ],
        )
        for (example_id, entry), vector in zip(fresh, vectors, strict=True):
            entries[example_id] = _with_vector(entry, vector)
        q.drop_stale_vectors(session=session)
        ordered = [entries[i] for i in sorted(entries)]
        self._snapshot = _Snapshot(ordered, visibility, dimension)
        self._entries, self._versions, self._fingerprint = entries, versions, fingerprint
        self._last_sync = utcnow()
        self._version += 1
        return SyncReport(
            changed=True,
            added=added,
            updated=updated,
            removed=len(gone),
            embedded=len(fresh),
            reused=reused,
            skipped=skipped,
            examples=len(ordered),
            seconds=time.perf_counter() - started,
        )


def _with_vector(entry: _Entry, vector: np.ndarray) -> _Entry:
    return _Entry(
        entry.example_id,
        entry.channel,
        entry.thread_ts,
        entry.source,
        entry.question,
        entry.answer,
        np.asarray(vector, dtype=np.float32),
        entry.tokens,
    )


def stored_stats(*, session: Session, model: str = MINILM, dimension: int = 384) -> IndexStats:
    """What the database holds for the index (``threadtune index stats``), without loading a model:
    the most common (model, dimension) among stored vectors, or the given ones when none is."""
    summary = q.stored_summary(session=session)
    vectors = summary["vectors"]
    if vectors:
        (model, dimension), count = max(vectors.items(), key=lambda item: item[1])
    else:
        count = 0
    return IndexStats(
        examples=count,
        model=model,
        dimension=dimension,
        last_sync=summary["last_indexed"],
        pending=summary["missing"],
    )
