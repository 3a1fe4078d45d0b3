"""Exact and near de-duplication.

* **Exact**: equal conversations after normalising whitespace and case (the same hash curation
  uses, :func:`engine.curation.content_hash`).
* **Near**: word-trigram shingles of the conversation's normalised text, MinHash signatures and
  ``datasketch``'s LSH index to find candidate pairs without comparing all pairs; each candidate
  pair is then verified with the exact Jaccard similarity of the two shingle sets, so a cluster
  never holds a pair the index merely guessed. The LSH index is tuned for recall (a lower band
  threshold than the verification threshold): a missed pair costs leakage, a false candidate
  only one set comparison.

Clusters are connected components of duplicate pairs; each keeps the example with the most
curators, then the newest, and lists the others.
"""

from __future__ import annotations

import gc
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from engine.curation import content_hash, normalise
from engine.dataset.config import DatasetConfig
from engine.dataset.findings import WARNING, Entry, Finding, finding

SHINGLE_WORDS = 3
# The LSH bands are chosen for this threshold, below the verification threshold, so that pairs just
# above the threshold are still found (recall ≥ 0.95 on planted duplicates, see bench/dataset.py).
LSH_MARGIN = 0.2


def shingles(messages: Sequence[dict[str, str]]) -> frozenset[int]:
    """Word-trigram shingles (32-bit CRC of each trigram) of a conversation's normalised text."""
    words = normalise(" ".join(m["content"] for m in messages)).split()
    if len(words) < SHINGLE_WORDS:
        return frozenset({zlib.crc32(" ".join(words).encode())})
    return frozenset(
        zlib.crc32(" ".join(words[i : i + SHINGLE_WORDS]).encode())
        for i in range(len(words) - SHINGLE_WORDS + 1)
    )


def jaccard(a: frozenset[int], b: frozenset[int]) -> float:
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: indexing allocates many small acyclic objects, and on a
    large heap (50,000 examples loaded) each collection pass would rescan all of it."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _identity(value: int) -> int:
    return value


SIGNATURE_CHUNK = 512  # examples per vectorised signature batch (bounds the temporary matrix)


class NearDuplicateIndex:
    """MinHash signatures (``datasketch``'s affine32 scheme) in a ``datasketch.MinHashLSH`` index;
    returns the candidate pairs that share a band, verified by exact Jaccard ≥ threshold."""

    def __init__(self, threshold: float, num_perm: int = 64) -> None:
        from datasketch import MinHash, MinHashLSH

        self.threshold = threshold
        self.num_perm = num_perm
        self.seed = 1
        self._minhash = MinHash
        self._permutations = MinHash(num_perm=num_perm, seed=self.seed).permutations
        self._lsh = MinHashLSH(threshold=max(0.05, threshold - LSH_MARGIN), num_perm=num_perm)

    def signature(self, shingle_set: frozenset[int]):
        """One example's MinHash, the plain datasketch way (the reference for
        :meth:`signatures`)."""
        mh = self._minhash(
            num_perm=self.num_perm,
            seed=self.seed,
            hashfunc=_identity,
            permutations=self._permutations,
            scheme="affine32",
        )
        mh.update_batch(shingle_set)
        return mh

    def signatures(self, sets: Sequence[frozenset[int]]):
        """The MinHash signatures of many sets at once: the same values as :meth:`signature`
        (datasketch's affine32 arithmetic — MurmurHash3 finaliser, then ``a·h + b`` mod 2³² per
        permutation, minimum per set) computed for a whole batch with numpy; the per-object path
        costs more than the rest of the build's de-duplication together."""
        import numpy as np
        from datasketch import LeanMinHash

        try:
            from datasketch.minhash import _fmix
        except ImportError:  # another datasketch layout: fall back to the per-example path
            return [LeanMinHash(self.signature(s)) for s in sets]
        a, b = (np.asarray(p, dtype=np.uint32) for p in self._permutations)
        out: list[LeanMinHash] = []
        for start in range(0, len(sets), SIGNATURE_CHUNK):
            chunk = sets[start : start + SIGNATURE_CHUNK]
            lengths = np.fromiter((len(s) for s in chunk), dtype=np.int64, count=len(chunk))
            values = np.fromiter(
                (v for s in chunk for v in s), dtype=np.uint32, count=int(lengths.sum())
            )
            mixed = _fmix(values, 32).reshape(-1, 1)
            permuted = mixed * a + b  # uint32 arithmetic wraps: mod 2^32, as in datasketch
            offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
            minima = np.minimum.reduceat(permuted, offsets, axis=0)
            out.extend(
                LeanMinHash(seed=self.seed, hashvalues=row, scheme="affine32") for row in minima
            )
        return out

    def pairs(self, sets: Sequence[frozenset[int]]) -> tuple[list[tuple[int, int, float]], int]:
        """Verified near-duplicate pairs ``(i, j, jaccard)`` with ``i < j`` among ``sets``, and the
        number of candidate pairs the index proposed."""
        with _gc_paused():
            return self._pairs(sets)

    def _pairs(self, sets: Sequence[frozenset[int]]) -> tuple[list[tuple[int, int, float]], int]:
        with self._lsh.insertion_session() as session:
            for i, signature in enumerate(self.signatures(sets)):
                session.insert(i, signature, check_duplication=False)
        # Candidates are the keys sharing a bucket in any band; reading the buckets once is
        # cheaper than one query per example.
        candidates: set[tuple[int, int]] = set()
        for table in self._lsh.hashtables:
            for bucket in table.keys():  # noqa: SIM118 — a datasketch storage, not a dict
                members = table.get(bucket)
                if len(members) > 1:
                    ordered = sorted(members)
                    candidates.update(
                        (x, y) for n, x in enumerate(ordered) for y in ordered[n + 1 :]
                    )
        found = []
        for i, j in sorted(candidates):
            similarity = jaccard(sets[i], sets[j])
            if similarity >= self.threshold:
                found.append((i, j, similarity))
        return found, len(candidates)


@dataclass(frozen=True)
class Cluster:
    """Duplicates collapsed to one example: ``kind`` exact | near, the kept key, the dropped keys
    and the lowest similarity of a pair that joined the cluster (1.0 for exact)."""

    kind: str
    kept: str
    dropped: tuple[str, ...]
    similarity: float

    @property
    def members(self) -> tuple[str, ...]:
        return (self.kept, *self.dropped)

    def to_dict(self, where: dict[str, str]) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "similarity": round(self.similarity, 4),
            "kept": where.get(self.kept, self.kept),
            "dropped": [where.get(k, k) for k in self.dropped],
            "kept_key": self.kept,
            "dropped_keys": list(self.dropped),
        }


@dataclass
class DedupeResult:
    kept: list[Entry]
    clusters: list[Cluster]
    findings: list[Finding]
    candidate_pairs: int = 0
    near_pairs: list[tuple[str, str, float]] = field(default_factory=list)


def preference(entry: Entry) -> tuple:
    """Sort key of the example a cluster keeps: most curators, then newest, then the key (so the
    choice never depends on the order rows came in)."""
    created = entry.created_at.timestamp() if entry.created_at is not None else 0.0
    return (len(entry.curators), created, entry.key)


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _why_kept(kept: Entry, other: Entry) -> str:
    if len(kept.curators) > len(other.curators):
        return "that one is kept because it has more curators"
    if kept.created_at and other.created_at and kept.created_at > other.created_at:
        return "that one is kept because it is newer"
    return "both have as many curators and are as new, so that one is kept"


def dedupe(entries: Sequence[Entry], *, config: DatasetConfig) -> DedupeResult:
    """Collapse exact then near duplicates among ``entries`` (all already valid)."""
    where = {e.key: e.origin.where(config.workspace_url) for e in entries}
    findings: list[Finding] = []
    clusters: list[Cluster] = []

    groups: dict[str, list[Entry]] = {}
    for entry in entries:
        groups.setdefault(content_hash(entry.messages), []).append(entry)
    representatives: list[Entry] = []
    for group in groups.values():
        best = max(group, key=preference)
        representatives.append(best)
        if len(group) > 1:
            dropped = sorted((e for e in group if e is not best), key=lambda e: e.key)
            clusters.append(Cluster("exact", best.key, tuple(e.key for e in dropped), 1.0))
            for e in dropped:
                findings.append(
                    finding(
                        WARNING,
                        "dedupe.exact",
                        e,
                        f"Same conversation as {where[best.key]} (ignoring case and spacing); "
                        f"{_why_kept(best, e)}.",
                        config.workspace_url,
                    )
                )
    representatives.sort(key=lambda e: e.key)

    index = NearDuplicateIndex(config.near_dup_threshold, config.num_perm)
    sets = [shingles(e.messages) for e in representatives]
    pairs, candidates = index.pairs(sets)
    uf = _UnionFind(len(representatives))
    for i, j, _ in pairs:
        uf.union(i, j)
    components: dict[int, list[int]] = {}
    for i, _ in enumerate(representatives):
        components.setdefault(uf.find(i), []).append(i)
    lowest: dict[int, float] = {}
    for i, _, s in pairs:
        root = uf.find(i)
        lowest[root] = min(lowest.get(root, 1.0), s)

    kept: list[Entry] = []
    for root, members in components.items():
        best_i = max(members, key=lambda i: preference(representatives[i]))
        best = representatives[best_i]
        kept.append(best)
        if len(members) > 1:
            dropped_idx = sorted(
                (i for i in members if i != best_i), key=lambda i: representatives[i].key
            )
            clusters.append(
                Cluster(
                    "near",
                    best.key,
                    tuple(representatives[i].key for i in dropped_idx),
                    lowest[root],
                )
            )
            for i in dropped_idx:
                e = representatives[i]
                findings.append(
                    finding(
                        WARNING,
                        "dedupe.near",
                        e,
                        f"Nearly the same conversation as {where[best.key]} "
                        f"({jaccard(sets[i], sets[best_i]):.0%} of word triples shared); "
                        f"{_why_kept(best, e)}.",
                        config.workspace_url,
                    )
                )
    kept.sort(key=lambda e: e.key)
    near_pairs = [(representatives[i].key, representatives[j].key, s) for i, j, s in pairs]
    return DedupeResult(kept, clusters, findings, candidates, near_pairs)


def all_pairs(sets: Sequence[frozenset[int]], threshold: float) -> list[tuple[int, int, float]]:
    """The exact baseline: Jaccard of every pair (quadratic; for measuring recall and speed)."""
    out = []
    lengths = [len(s) for s in sets]
    for i in range(len(sets)):
        a, la = sets[i], lengths[i]
        for j in range(i + 1, len(sets)):
            inter = len(a & sets[j])
            union = la + lengths[j] - inter
            if union and inter / union >= threshold:
                out.append((i, j, inter / union))
    return out
