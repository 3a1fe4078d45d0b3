"""Leak-free train / validation / test splits.

Examples are grouped before they are split: every example of one Slack thread, and every thread
that holds a member of one duplicate cluster (exact or near, kept or dropped), form one group.
A group's split is decided by a hash of its name and the seed alone, so the split is the same on
every build, does not depend on row order, and a thread keeps its split as the data grows.

With 10 examples or more, validation and test each get at least one group (taken from the
training groups nearest their hash range) when the ratios ask for them. :func:`check_leakage`
proves on every build that no thread, duplicate cluster or conversation sits in two splits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from engine.curation import content_hash
from engine.dataset.config import DatasetConfig
from engine.dataset.dedupe import Cluster, _UnionFind
from engine.dataset.findings import WARNING, Entry, Finding

SPLITS = ("train", "validation", "test")
HELD_OUT_FROM = 10  # examples from which validation and test must not be empty


def unit_hash(seed: int, name: str) -> float:
    """A stable number in [0, 1) for ``name``."""
    digest = hashlib.sha256(f"{seed}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass
class SplitResult:
    splits: dict[str, list[Entry]]
    groups: int
    findings: list[Finding]

    def counts(self) -> dict[str, int]:
        return {name: len(self.splits[name]) for name in SPLITS}


def groups_of(
    entries: Sequence[Entry], clusters: Sequence[Cluster], thread_of: Mapping[str, str]
) -> dict[str, str]:
    """Entry key → group name (the smallest thread key of its group)."""
    threads = sorted(
        {thread_of[e.key] for e in entries} | {thread_of[k] for c in clusters for k in c.members}
    )
    index = {t: i for i, t in enumerate(threads)}
    uf = _UnionFind(len(threads))
    for cluster in clusters:
        first = index[thread_of[cluster.kept]]
        for key in cluster.dropped:
            uf.union(first, index[thread_of[key]])
    # _UnionFind keeps the smallest index as root and threads are sorted: root = smallest name.
    return {e.key: threads[uf.find(index[thread_of[e.key]])] for e in entries}


def split_entries(
    entries: Sequence[Entry],
    clusters: Sequence[Cluster],
    thread_of: Mapping[str, str],
    *,
    config: DatasetConfig,
) -> SplitResult:
    """Split the kept ``entries``; ``thread_of`` maps every key (kept and dropped) to its thread."""
    group_of = groups_of(entries, clusters, thread_of)
    names = sorted(set(group_of.values()))
    position = {g: unit_hash(config.seed, g) for g in names}
    cut_train = config.train_ratio
    cut_validation = config.train_ratio + config.validation_ratio
    assigned: dict[str, str] = {}
    for g in names:
        u = position[g]
        assigned[g] = "train" if u < cut_train else "validation" if u < cut_validation else "test"

    findings: list[Finding] = []
    if len(entries) >= HELD_OUT_FROM:
        for split, ratio in (("validation", config.validation_ratio), ("test", config.test_ratio)):
            if ratio <= 0 or split in assigned.values():
                continue
            train_groups = sorted(
                (g for g, s in assigned.items() if s == "train"), key=lambda g: position[g]
            )
            if len(train_groups) >= 2:
                assigned[train_groups[-1]] = split
            else:
                findings.append(
                    Finding(
                        WARNING,
                        "split.too_few_threads",
                        "dataset",
                        f"All {len(entries)} examples come from {len(names)} thread group(s), so "
                        f"the {split} split stays empty; "
                        "curate answers from more threads.",
                    )
                )

    splits: dict[str, list[Entry]] = {name: [] for name in SPLITS}
    for entry in entries:
        splits[assigned[group_of[entry.key]]].append(entry)
    for name in SPLITS:
        splits[name].sort(key=lambda e: (unit_hash(config.seed, e.key), e.key))
    return SplitResult(splits, len(names), findings)


def check_leakage(
    splits: Mapping[str, Sequence[Entry]], clusters: Sequence[Cluster], thread_of: Mapping[str, str]
) -> dict[str, list[str]]:
    """Everything that sits in two splits: threads, duplicate clusters (through any member's
    thread) and conversations (by normalised content). Empty lists = no leakage."""
    split_of_thread: dict[str, set[str]] = {}
    split_of_text: dict[str, set[str]] = {}
    for name, entries in splits.items():
        for entry in entries:
            split_of_thread.setdefault(thread_of[entry.key], set()).add(name)
            split_of_text.setdefault(content_hash(entry.messages), set()).add(name)
    threads = sorted(t for t, s in split_of_thread.items() if len(s) > 1)
    texts = sorted(h for h, s in split_of_text.items() if len(s) > 1)
    cluster_leaks = []
    for cluster in clusters:
        seen = set().union(*(split_of_thread.get(thread_of[k], set()) for k in cluster.members))
        if len(seen) > 1:
            cluster_leaks.append(cluster.kept)
    return {"threads": threads, "clusters": sorted(cluster_leaks), "conversations": texts}
