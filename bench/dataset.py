"""Dataset build benchmark: a snapshot of 50,000 generated examples, and near-duplicate detection
(MinHash LSH) against the exact all-pairs Jaccard baseline on a 5,000-example subset, measured in
the same run.

    .venv/bin/python bench/dataset.py [--examples 50000] [--subset 5000]

The examples are generated deterministically (English words drawn from the Python docs' text,
questions and answers of varied length, two-example threads, a few channels and curators). Each
block of 5,000 plants its own exact duplicates (case and spacing changed) and near duplicates
(1–3 words replaced); the first block is the subset where the baseline runs.

Prints seconds and peak memory of the build, near-duplicate recall (planted pairs at or above the
threshold found in one cluster; and, on the subset, the share of the baseline's pairs the LSH
finds) and the LSH's speed against the baseline's. Targets: 50,000 examples in under 60 s,
recall ≥ 0.95 at ≥ 50× the baseline's speed. The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

BLOCK = 5_000
CHANNELS = ["C0HELP", "C0INFRA", "C0DATA", "C0SEC", "C0FRONT", "C0BACK"]
CURATORS = [f"UCUR{i}" for i in range(12)]


def vocabulary() -> list[str]:
    import pydoc_data.topics as topics

    words = re.findall(
        r"[a-z]{3,12}", " ".join(topics.topics[k] for k in sorted(topics.topics)).lower()
    )
    return sorted(set(words))


def sentence(rng: random.Random, words: list[str], n: int) -> list[str]:
    return [rng.choice(words) for _ in range(n)]


def generate(n: int, seed: int = 7) -> tuple[list[dict], list[tuple[int, int]]]:
    """``n`` example rows and the planted (original, copy) index pairs (exact and near)."""
    rng = random.Random(seed)
    words = vocabulary()
    rows: list[dict] = []
    planted: list[tuple[int, int]] = []
    for block_start in range(0, n, BLOCK):
        size = min(BLOCK, n - block_start)
        for k in range(size):
            i = block_start + k
            channel = CHANNELS[rng.randrange(len(CHANNELS))]
            origin = block_start + rng.randrange(max(1, k)) if k else None
            roll = rng.random()
            if origin is not None and roll < 0.01:  # exact duplicate: case and spacing changed
                messages = [
                    {"role": m["role"], "content": "  " + m["content"].upper().replace(" ", "   ")}
                    for m in rows[origin]["messages"]
                ]
                planted.append((origin, i))
            elif origin is not None and roll < 0.06:  # near duplicate: 1-3 words replaced
                messages = [dict(m) for m in rows[origin]["messages"]]
                for _ in range(rng.randint(1, 3)):
                    m = messages[rng.randrange(len(messages))]
                    tokens = m["content"].split()
                    tokens[rng.randrange(len(tokens))] = rng.choice(words)
                    m["content"] = " ".join(tokens)
                planted.append((origin, i))
            else:
                question = " ".join(sentence(rng, words, rng.randint(8, 30))) + "?"
                answer = " ".join(sentence(rng, words, rng.randint(15, 80))) + "."
                messages = [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ]
            thread = f"{1_700_000_000 + (i // 2) * 10}.000100"  # two examples per thread
            rows.append(
                {
                    "channel": channel,
                    "thread_ts": thread,
                    "message_ts": f"{1_700_000_000 + i * 10 + 1}.000200",
                    "messages": messages,
                    "content_hash": f"bench{i}",
                    "curators": rng.sample(CURATORS, rng.choice((1, 1, 1, 2))),
                }
            )
    return rows, planted


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def store(rows: list[dict], url: str) -> None:
    from sqlalchemy import insert, select

    from storage.db import make_engine, session_scope, upgrade
    from storage.models import Example, ExampleCurator, utcnow

    upgrade(url)
    engine = make_engine(url)
    now = utcnow()
    with session_scope(engine) as session:
        session.execute(
            insert(Example),
            [
                {k: v for k, v in r.items() if k != "curators"}
                | {
                    "status": "active",
                    "status_reason": "",
                    "team_id": "",
                    "answer_user": "U1",
                    "redactions": {},
                    "source": "slack",
                    "created_at": now,
                    "updated_at": now,
                }
                for r in rows
            ],
        )
        ids = dict(session.execute(select(Example.message_ts, Example.id)).all())
        session.execute(
            insert(ExampleCurator),
            [
                {"example_id": ids[r["message_ts"]], "user_id": c, "created_at": now}
                for r in rows
                for c in r["curators"]
            ],
        )
    engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=50_000)
    parser.add_argument("--subset", type=int, default=BLOCK)
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table
    from transformers import AutoTokenizer

    from engine.basemodel import embedded_gguf_path
    from engine.dataset import DatasetConfig
    from engine.dataset.build import build_snapshot
    from engine.dataset.dedupe import NearDuplicateIndex, all_pairs, jaccard, shingles
    from storage.db import make_engine, session_scope

    config = DatasetConfig()
    home = Path(tempfile.mkdtemp(prefix="tt-bench-dataset-"))
    url = f"sqlite:///{home / 'bench.db'}"

    t0 = time.perf_counter()
    rows, planted = generate(args.examples)
    store(rows, url)
    setup_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    gguf = embedded_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer_s = time.perf_counter() - t0

    rss_before = peak_rss_mib()
    engine = make_engine(url)
    t0 = time.perf_counter()
    with session_scope(engine) as session:
        result = build_snapshot(
            session, home, base_model_path=gguf.parent, config=config, tokenizer=tokenizer
        )
    build_s = time.perf_counter() - t0
    rss_peak = peak_rss_mib()
    analysis = result.analysis
    assert analysis is not None

    # Recall on the planted pairs whose exact similarity reaches the threshold: found when both
    # examples sit in one cluster (exact and near clusters chain: a near cluster may hold the kept
    # example of an exact one).
    key = [f"{r['channel']}/{r['message_ts']}" for r in rows]
    root_of = cluster_roots(analysis.dedupe.clusters)
    sets = [shingles(r["messages"]) for r in rows]
    true_planted = [
        (a, b) for a, b in planted if jaccard(sets[a], sets[b]) >= config.near_dup_threshold
    ]

    def same_cluster(a: int, b: int) -> bool:
        return root_of.get(key[a], key[a]) == root_of.get(key[b], key[b])

    found_planted = sum(1 for a, b in true_planted if same_cluster(a, b))
    planted_recall = found_planted / len(true_planted) if true_planted else 1.0

    # The subset: LSH against the exact all-pairs baseline on the same shingle sets.
    subset = sets[: args.subset]
    t0 = time.perf_counter()
    lsh_pairs, candidates = NearDuplicateIndex(config.near_dup_threshold, config.num_perm).pairs(
        subset
    )
    lsh_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    exact_pairs = all_pairs(subset, config.near_dup_threshold)
    baseline_s = time.perf_counter() - t0
    truth = {(a, b) for a, b, _ in exact_pairs}
    got = {(a, b) for a, b, _ in lsh_pairs}
    subset_recall = len(truth & got) / len(truth) if truth else 1.0
    speedup = baseline_s / lsh_s if lsh_s else float("inf")

    figures = {
        "examples": args.examples,
        "build_seconds": round(build_s, 2),
        "peak_rss_mib": round(rss_peak, 1),
        "rss_before_build_mib": round(rss_before, 1),
        "train": result.counts["train"],
        "validation": result.counts["validation"],
        "test": result.counts["test"],
        "duplicates_collapsed": result.counts["duplicates"],
        "planted_pairs_at_threshold": len(true_planted),
        "planted_recall": round(planted_recall, 4),
        "subset": len(subset),
        "subset_true_pairs": len(truth),
        "subset_recall": round(subset_recall, 4),
        "subset_lsh_candidates": candidates,
        "lsh_seconds": round(lsh_s, 3),
        "baseline_seconds": round(baseline_s, 2),
        "speedup": round(speedup, 1),
        "tokens_p50": analysis.tokens.p50,
        "tokens_p95": analysis.tokens.p95,
        "tokens_max": analysis.tokens.max,
        "setup_seconds": round(setup_s, 1),
        "tokenizer_load_seconds": round(tokenizer_s, 1),
        "cpus": os.cpu_count(),
        "targets_met": build_s < 60
        and planted_recall >= 0.95
        and subset_recall >= 0.95
        and speedup >= 50,
    }
    table = Table(title=f"Dataset build: {args.examples:,} examples")
    table.add_column("Figure")
    table.add_column("Value", justify="right")
    table.add_column("Target", justify="right")
    targets = {
        "build_seconds": "< 60",
        "planted_recall": "≥ 0.95",
        "subset_recall": "≥ 0.95",
        "speedup": "≥ 50×",
    }
    for name, value in figures.items():
        table.add_row(name, str(value), targets.get(name, ""))
    Console().print(table)
    engine.dispose()
    shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(figures))
    return 0


def cluster_roots(clusters) -> dict[str, str]:
    """Key → one representative of everything it is joined to through the clusters."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    for cluster in clusters:
        root = find(cluster.kept)
        for member in cluster.dropped:
            r = find(member)
            if r != root:
                parent[r] = root
    return {k: find(k) for c in clusters for k in c.members}


if __name__ == "__main__":
    sys.exit(main())
