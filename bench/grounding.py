"""Grounded answers (issue 13), both halves in one run: the quality of grounded answers on the
base model, and the index's speed at 50,000 examples.

    .venv/bin/python bench/grounding.py [--only quality|speed] [--examples 50000]
        [--embedded 2000] [--queries 300] [--max-new-tokens 64] [--threshold 0.5]

Both halves use the product's index, ``engine.retrieval.Index`` (dense all-MiniLM-L6-v2 plus BM25,
fused by reciprocal rank), fed from a real SQLite database (migrated with ``storage.db.upgrade``)
and brought in step with ``Index.sync`` as the bot does. The process is pinned to 2 cores.

**Quality** (in-process backend, the base model SmolLM2-135M-Instruct, closed-book against
grounded in the same run). Two invented sets — all invented so that the base model cannot know any
of it — each of 20 internal systems with one curated Q&A holding one key fact (a channel, a port,
a command, a hostname…), 10 more curated Q&As on the same systems (other facts, there to be
retrieved wrongly), 30 paraphrased questions whose answer is curated (all 20 systems, 10 of them
twice) and 10 questions on the same kind of topics that nothing curated covers:

* the **tuning set** is the one the defaults of ``GroundingConfig`` (threshold 0.50, margin 0.10,
  quoting) and the prompt were chosen on: its figures are not a held-out measurement;
* the **fresh set** was written afterwards, for this bench, and never used to choose anything
  (other systems, other kinds of facts, other phrasings): its figures are the honest ones.

The curated examples are stored the way curation stores them (``storage.curation.save_example``,
the channel recorded as public with ``storage.retrieval.record_channel``), the index syncs once,
and every question is asked through :func:`engine.answer.answer` as ``/ask`` does, all at once, the
model calls batched by the wrapper ``/ask`` uses. Figures, per set:

* **source in top 3** — the paraphrase's curated example among the index's first 3 hits.
* **key fact, closed-book / grounded** — the key fact (case-insensitive) in the answer of the
  model asked the bare question / in what :func:`engine.answer.answer` shows. An abstention on a
  paraphrase counts as a miss.
* **key fact in the model's own words** and **quoted** — the pipeline shows the best curated
  answer in place of the model's reply when the reply repeats none of that answer's verbatim facts
  (``GroundingConfig.quote_when_missing``). So the grounded figure is, by construction, at least
  the share whose best source is the right one; the model's own figure (its reply, before any
  quote) says how well it uses the context, and quoted says how often the quote stood in.
* **abstention** — uncovered questions the pipeline abstains on; **wrong abstentions** —
  paraphrases it abstains on.
* the best dense similarity of covered and uncovered questions (what the threshold splits).

**Speed** (``--examples``, default 50,000):

* **indexing throughput** — ``--embedded`` synthetic curated examples stored through
  ``storage.datasets.insert_examples``, then one ``Index.sync``: read, tokenise, embed with
  all-MiniLM-L6-v2 on the compute thread, BM25-index, write the vectors. Examples per second,
  embedding included (and the embedding alone, for comparison).
* **at ``--examples``** — embedding all 50,000 would take minutes on 2 cores and measures nothing
  the first step did not, so the other examples get stored vectors directly: each a copy of a
  really embedded question's vector plus Gaussian noise (renormalised), written with the hash of
  its own text, so that a new ``Index`` takes them as up to date. A new ``Index`` then syncs
  (the restart path: the matrix rebuilt from rows, nothing embedded — checked) and answers
  ``--queries`` questions (rephrased curated questions and questions nothing covers), one at a
  time: embed + dense search + BM25 + fusion, as ``Index.search`` does it for /ask.
* **a curation at that size** — one example curated, then ``sync``: how soon it is retrievable.

Targets (issue 13): source in top 3 ≥ 90% of paraphrases; key fact in the grounded answer ≥ 80%;
abstention on uncovered questions ≥ 80% with ≤ 10% wrong abstentions; retrieval (embed + search +
fuse) p50 < 20 ms and p99 < 60 ms at 50,000 examples on 2 cores. The bench reports each against its
target (quality targets on both sets) and never fails the process on a miss.
The machine's other work shows in wall-clock times (the JSON carries the load average at the start
and the end); the CPU time of each retrieval, summed over the process's threads, is printed beside.
Tables go to stdout, progress to stderr; the last line of stdout is one JSON object with every
figure, the targets and whether each was met.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench._support import pct  # noqa: E402

CORES = 2
TARGET_P50_MS, TARGET_P99_MS = 20, 60
QUALITY_TARGETS = {  # figure → (comparison, goal), per quality set
    "source_top3_pct": (">=", 90),
    "key_fact_grounded_pct": (">=", 80),
    "abstention_pct": (">=", 80),
    "wrong_abstention_pct": ("<=", 10),
}
SPEED_TARGETS = {"retrieval_p50_ms": ("<", TARGET_P50_MS), "retrieval_p99_ms": ("<", TARGET_P99_MS)}


def met(value: float, op: str, goal: float) -> bool:
    return {">=": value >= goal, "<=": value <= goal, "<": value < goal}[op]


# -- speed: synthetic examples at 50,000 ---------------------------------------------------------

SPEED_SYSTEMS = [
    "billing",
    "search-api",
    "payments",
    "auth",
    "ledger",
    "mobile app",
    "data warehouse",
    "CI runners",
    "VPN",
    "staging cluster",
    "feature flags",
    "email relay",
    "CDN",
    "on-call rota",
    "release train",
    "metrics stack",
    "log pipeline",
    "secrets vault",
    "SSO",
    "object storage",
]
ASKS = [
    "How do I {a} {s}?",
    "What's the process to {a} {s}?",
    "Who can help me {a} {s}?",
    "Is there a runbook to {a} {s}?",
    "Where do I go to {a} {s}?",
]
REPHRASED = [
    "quick one: how would I {a} {s}",
    "what is the way to {a} {s} these days?",
    "any docs on how to {a} {s}?",
]
ACTIONS = [
    "get access to the",
    "rotate the credentials of the",
    "roll back a release of the",
    "request more quota on the",
    "debug timeouts in the",
    "restart the",
    "rename a team in the",
    "add a webhook to the",
    "export a report from the",
    "migrate a table in the",
    "raise the rate limit of the",
    "turn on audit logs for the",
    "page the owners of the",
    "clean up stale data in the",
    "upgrade the client library of the",
]
SPEED_UNCOVERED = [
    "What's for lunch on Friday?",
    "Can I bring my dog to the office?",
    "When is the next company offsite?",
    "How do I expense a conference ticket?",
    "Who won the hackathon last year?",
    "Is the parking garage open on Sunday?",
]


def synthetic_examples(n: int, seed: int = 13) -> list[dict]:
    """``n`` curated examples (deterministic): a question about one of 20 systems and 15 actions,
    with a ticket number and a region so that texts differ, and an answer naming an owner."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        system, action = rng.choice(SPEED_SYSTEMS), rng.choice(ACTIONS)
        question = (
            rng.choice(ASKS).format(a=action, s=system)
            + f" (ticket OPS-{rng.randrange(10_000, 99_999)}, {rng.choice(['eu', 'us', 'ap'])}"
            f"-{rng.randrange(1, 9)})"
        )
        answer = (
            f"Open a request in #{system.replace(' ', '-')}-ops, then run `tt {action.split()[0]} "
            f"{system.split()[0]}`. Owner: @team-{rng.randrange(1, 60)}."
        )
        rows.append(
            {
                "source": "slack",
                "channel": f"C{rng.randrange(100, 140)}",
                "thread_ts": f"{1_700_000_000 + i}.000100",
                "message_ts": f"{1_700_000_000 + i}.000200",
                "content_hash": f"bench-{i}",
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ],
            }
        )
    return rows


def queries(n: int, seed: int = 29) -> list[str]:
    """Rephrased curated questions, and one in six about something nothing covers."""
    rng = random.Random(seed)
    return [
        rng.choice(SPEED_UNCOVERED)
        if i % 6 == 5
        else rng.choice(REPHRASED).format(a=rng.choice(ACTIONS), s=rng.choice(SPEED_SYSTEMS))
        for i in range(n)
    ]


def pin_cores(cores: int, torch_threads: int) -> int:
    """Run this process on ``cores`` CPUs at most, torch with ``torch_threads`` (0: one per
    core)."""
    available = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, set(available[:cores]))
    import torch

    torch.set_num_threads(torch_threads or min(cores, len(available)))
    return min(cores, len(available))


class _Precomputed:
    """An embedder that answers the vectors computed already (to time search without embedding)."""

    def __init__(self, embedder, vectors: dict) -> None:  # noqa: ANN001
        self.name, self.dimension, self.embedded = embedder.name, embedder.dimension, 0
        self._vectors = vectors

    def embed(self, texts: list[str], *, urgent: bool = False):  # noqa: ANN201
        return self._vectors[texts[0]]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def speed_section(args: argparse.Namespace, work: Path, console) -> tuple[list, dict]:  # noqa: ANN001
    """Indexing throughput, restart from stored vectors, and search latency at ``--examples``.
    Rows: (what, figure, key of the figure in the JSON or "")."""
    import numpy as np

    from engine.retrieval import Index, MiniLMEmbedder
    from engine.retrieval.text import question_text, text_hash
    from storage import curation as cq
    from storage import retrieval as rq
    from storage.datasets import insert_examples
    from storage.db import make_engine, session_scope, upgrade

    url = f"sqlite:///{work / 'bench-grounding.db'}"
    upgrade(url)
    db = make_engine(url)
    rows = synthetic_examples(args.examples)
    embedded_n = min(args.embedded, args.examples)
    embedder = MiniLMEmbedder()
    embedder.embed(["warm-up"])  # the model's load is not indexing

    console.print(f"Indexing {embedded_n:,} examples (embedding included)…")
    with session_scope(db) as s:
        insert_examples(session=s, examples=rows[:embedded_n])
    indexer = Index(embedder)
    started = time.perf_counter()
    with session_scope(db) as s:
        report = indexer.sync(session=s)
    index_seconds = time.perf_counter() - started
    assert report.embedded == embedded_n, report
    sample = [question_text(r["messages"]) for r in rows[:256]]
    started = time.perf_counter()
    embedder.embed(sample)
    embed_only = len(sample) / (time.perf_counter() - started)

    console.print(
        f"Storing vectors for the other {args.examples - embedded_n:,} (copies of real "
        "ones plus noise, see the docstring)…"
    )
    with session_scope(db) as s:
        pool = rq.vectors_for(session=s, ids=range(1, embedded_n + 1))
    pool_vectors = np.stack([np.frombuffer(v.vector, dtype="<f4") for v in pool.values()])
    rng = np.random.default_rng(7)
    for start in range(embedded_n, args.examples, 5_000):
        chunk = rows[start : start + 5_000]
        with session_scope(db) as s:
            insert_examples(session=s, examples=chunk)
        vectors = pool_vectors[rng.integers(0, len(pool_vectors), len(chunk))]
        vectors = vectors + rng.normal(0, 0.02, vectors.shape).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        with session_scope(db) as s:
            rq.save_vectors(
                session=s,
                rows=[
                    {
                        "example_id": start + i + 1,
                        "model": embedder.name,
                        "dimension": embedder.dimension,
                        "text_hash": text_hash(embedder.name, question_text(row["messages"])),
                        "vector": vector.astype("<f4").tobytes(),
                    }
                    for i, (row, vector) in enumerate(zip(chunk, vectors, strict=True))
                ],
            )

    console.print(f"A new index on {args.examples:,} stored examples (the restart path)…")
    restarted = Index(MiniLMEmbedder(embedder._loaded()))
    started = time.perf_counter()
    with session_scope(db) as s:
        report = restarted.sync(session=s)
    restart_seconds = time.perf_counter() - started
    assert report.embedded == 0 and report.examples == args.examples, report

    console.print(f"{args.queries} searches, one at a time…")
    asked = queries(args.queries)
    for question in asked[:10]:
        restarted.search(question, k=5)
    total, cpu, embed, vectors = [], [], [], {}
    for question in asked:
        started = time.perf_counter()
        vectors[question] = restarted.embedder.embed([question], urgent=True)
        embed.append(time.perf_counter() - started)
        started, started_cpu = time.perf_counter(), time.process_time()
        restarted.search(question, k=5)
        total.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    # the same searches with the query vectors already computed: dense + BM25 + fusion alone
    real = restarted.embedder
    restarted.embedder = _Precomputed(real, vectors)
    search_only = []
    for question in asked:
        started = time.perf_counter()
        restarted.search(question, k=5)
        search_only.append(time.perf_counter() - started)
    restarted.embedder = real

    console.print("One example curated at that size, then sync…")
    fields = {
        **synthetic_examples(1, seed=99)[0],
        "message_ts": "1.000200",
        "thread_ts": "1.000100",
    }
    fields.pop("source")
    with session_scope(db) as s:
        cq.save_example(session=s, fields=fields, curator="UBENCH")
    started = time.perf_counter()
    with session_scope(db) as s:
        report = restarted.sync(session=s)
    curate_sync = time.perf_counter() - started
    assert report.embedded == 1 and report.examples == args.examples + 1, report
    started = time.perf_counter()
    with session_scope(db) as s:
        unchanged = restarted.sync(session=s)
    idle_sync = time.perf_counter() - started
    assert not unchanged.changed
    db.dispose()

    n = args.examples
    table_rows = [  # (what, figure, key)
        (
            f"indexing throughput ({embedded_n:,} examples, embedding included)",
            f"{embedded_n / index_seconds:,.0f} examples/s",
            "index_examples_per_s",
        ),
        ("  embedding alone (batches of 64)", f"{embed_only:,.0f} examples/s", ""),
        (
            f"new index from {n:,} stored vectors (restart, nothing embedded)",
            f"{restart_seconds:,.2f} s",
            "restart_load_s",
        ),
        (
            f"retrieval at {n:,}: embed + search + fuse, p50",
            f"{ms(pct(total, 0.5))} ms",
            "retrieval_p50_ms",
        ),
        (f"retrieval at {n:,}: p99", f"{ms(pct(total, 0.99))} ms", "retrieval_p99_ms"),
        ("  CPU time of one retrieval (all threads), p50", f"{ms(pct(cpu, 0.5))} ms", ""),
        ("  CPU time of one retrieval, p99", f"{ms(pct(cpu, 0.99))} ms", ""),
        ("  the query's embedding alone, p50", f"{ms(pct(embed, 0.5))} ms", ""),
        ("  search + fuse alone (vector given), p50", f"{ms(pct(search_only, 0.5))} ms", ""),
        ("  search + fuse alone, p99", f"{ms(pct(search_only, 0.99))} ms", ""),
        (f"one curation at {n:,}: sync until retrievable", f"{curate_sync:,.2f} s", ""),
        ("sync with nothing changed", f"{ms(idle_sync)} ms", ""),
    ]
    figures = {
        "examples": n,
        "embedded_for_throughput": embedded_n,
        "queries": len(total),
        "index_examples_per_s": round(embedded_n / index_seconds, 1),
        "embed_only_examples_per_s": round(embed_only, 1),
        "restart_load_s": round(restart_seconds, 3),
        "retrieval_p50_ms": ms(pct(total, 0.5)),
        "retrieval_p99_ms": ms(pct(total, 0.99)),
        # CPU time is what the other work on a shared machine does not inflate (much)
        "retrieval_cpu_p50_ms": ms(pct(cpu, 0.5)),
        "retrieval_cpu_p99_ms": ms(pct(cpu, 0.99)),
        "query_embed_p50_ms": ms(pct(embed, 0.5)),
        "query_embed_p99_ms": ms(pct(embed, 0.99)),
        "search_fuse_p50_ms": ms(pct(search_only, 0.5)),
        "search_fuse_p99_ms": ms(pct(search_only, 0.99)),
        "curation_sync_s": round(curate_sync, 3),
        "idle_sync_ms": ms(idle_sync),
    }
    return table_rows, figures


# -- quality: two invented sets ------------------------------------------------------------------


@dataclass(frozen=True)
class System:
    name: str
    question: str  # the curated question
    answer: str  # the curated answer, holding the key fact
    fact: str
    paraphrases: tuple[str, ...]


# The tuning set: the defaults of GroundingConfig and the prompt were chosen on it (see
# engine/answer/config.py). Kept as it was, so that its figures stay comparable with those notes.
TUNING_SYSTEMS: tuple[System, ...] = (
    System(
        "Zephyr billing",
        "Who owns the Zephyr billing pipeline?",
        "The payments platform team owns Zephyr billing. Ask in #team-zephyr-ops for access and "
        "for incidents.",
        "#team-zephyr-ops",
        (
            "Which channel do I contact about the Zephyr billing pipeline?",
            "Where should I report a Zephyr billing incident?",
        ),
    ),
    System(
        "Kestrel gateway",
        "Which port does the Kestrel gateway listen on?",
        "Kestrel gateway listens on port 7415 in every environment; open 7415 in your firewall "
        "rule.",
        "7415",
        ("What port is Kestrel gateway on?",),
    ),
    System(
        "Lumen indexer",
        "How do I restart the Lumen indexer?",
        "Run `lumenctl restart --drain` on the indexer host, then wait for the green tick.",
        "lumenctl restart --drain",
        (
            "What's the command to restart Lumen indexer?",
            "Lumen indexer is stuck, how do I restart it?",
        ),
    ),
    System(
        "Quartzline",
        "Where are the Quartzline nightly exports stored?",
        "Quartzline writes its nightly exports to the bucket qzl-exports-prod, one folder per day.",
        "qzl-exports-prod",
        ("Which bucket holds the Quartzline nightly export?",),
    ),
    System(
        "Brambleworks CI",
        "Who maintains Brambleworks CI?",
        "Brambleworks CI is maintained by the build tools group; their channel is "
        "#bramble-ci-help.",
        "#bramble-ci-help",
        (
            "Where do I ask for help with Brambleworks CI?",
            "Who should I ping when Brambleworks CI is broken?",
        ),
    ),
    System(
        "Otterpay",
        "What is the Otterpay sandbox hostname?",
        "Use sandbox.otterpay.internal for testing; never point tests at production.",
        "sandbox.otterpay.internal",
        ("Which host is the Otterpay sandbox?", "What hostname should tests use for Otterpay?"),
    ),
    System(
        "Halcyon feature flags",
        "How long does a Halcyon flag change take to propagate?",
        "Halcyon flag changes reach every service within 90 seconds.",
        "90 seconds",
        ("How quickly do Halcyon feature flag changes take effect?",),
    ),
    System(
        "Marlin search",
        "Which on-call rotation covers Marlin search?",
        "Marlin search is covered by the rotation named marlin-primary in the paging tool.",
        "marlin-primary",
        ("Who is on call for Marlin search?", "What's the pager rotation for Marlin search?"),
    ),
    System(
        "Pinecrest VPN",
        "How do I get access to the Pinecrest VPN?",
        "File a request with the form code VPN-PC-22 and your manager approves it.",
        "VPN-PC-22",
        ("What form do I use to request Pinecrest VPN access?",),
    ),
    System(
        "Saffron data warehouse",
        "What is the Saffron warehouse query timeout?",
        "Saffron cancels any query after 45 minutes; split longer jobs.",
        "45 minutes",
        (
            "How long can a query run on the Saffron warehouse?",
            "When does Saffron kill a long query?",
        ),
    ),
    System(
        "Tundra deploys",
        "Which branch does Tundra deploy from?",
        "Tundra deploys only from the branch release-tundra; merges to main don't ship.",
        "release-tundra",
        ("What branch ships Tundra to production?",),
    ),
    System(
        "Gryphon auth",
        "Who owns Gryphon auth?",
        "The identity team owns Gryphon auth; reach them in #gryphon-identity.",
        "#gryphon-identity",
        (
            "Which team should I talk to about Gryphon auth?",
            "Where do I ask about Gryphon login problems?",
        ),
    ),
    System(
        "Nimbus queue",
        "What is the Nimbus queue's maximum message size?",
        "Nimbus rejects messages larger than 256 KB; put bigger payloads in object storage.",
        "256 KB",
        ("How big can a Nimbus queue message be?",),
    ),
    System(
        "Corvid dashboards",
        "Where are the Corvid dashboards?",
        "Corvid dashboards live at dash.corvid.internal; sign in with your SSO account.",
        "dash.corvid.internal",
        ("What's the URL of the Corvid dashboards?", "How do I open the Corvid dashboards?"),
    ),
    System(
        "Ironbark backups",
        "How long are Ironbark backups kept?",
        "Ironbark keeps daily backups for 35 days and monthly ones for a year.",
        "35 days",
        ("What's the retention of Ironbark daily backups?",),
    ),
    System(
        "Willow mobile app",
        "Which channel announces Willow app releases?",
        "Willow release notes are posted in #willow-releases every Thursday.",
        "#willow-releases",
        (
            "Where can I see the Willow mobile release announcements?",
            "Where are Willow app releases announced?",
        ),
    ),
    System(
        "Falcon cache",
        "What port does the Falcon cache use?",
        "Falcon cache serves on port 6390 (not the Redis default).",
        "6390",
        ("Which port is Falcon cache on?",),
    ),
    System(
        "Juniper secrets",
        "How do I read a secret from Juniper?",
        "Run `juniper get <path> --env prod` after logging in with `juniper login`.",
        "juniper get",
        ("What's the command to fetch a Juniper secret?", "How can I get a secret out of Juniper?"),
    ),
    System(
        "Obsidian reports",
        "Who do I contact about Obsidian reports?",
        "Obsidian reporting belongs to the analytics guild in #obsidian-analytics.",
        "#obsidian-analytics",
        ("Which team owns the Obsidian reports?",),
    ),
    System(
        "Sable load balancer",
        "What is the Sable load balancer's idle timeout?",
        "Sable closes idle connections after 350 seconds; send keep-alives more often.",
        "350 seconds",
        ("After how long does the Sable load balancer drop idle connections?",),
    ),
)

# Other curated answers on the same systems: retrievable, never the one asked for.
TUNING_DISTRACTORS: tuple[tuple[str, str], ...] = (
    (
        "How do I get read access to Zephyr billing data?",
        "Request the zephyr-readers group in the access portal.",
    ),
    (
        "Does the Kestrel gateway support HTTP/2?",
        "Yes, Kestrel gateway speaks HTTP/2 to clients and HTTP/1.1 upstream.",
    ),
    (
        "Why is the Lumen indexer slow on Mondays?",
        "The weekly full reindex runs on Monday mornings; it finishes by noon.",
    ),
    ("Can I run Brambleworks CI jobs locally?", "Yes, with the bramble-runner container image."),
    (
        "How do I rotate my Otterpay API key?",
        "Rotate it in the Otterpay console under Developers, then update the vault entry.",
    ),
    (
        "How do I create a new Halcyon flag?",
        "Add it to the flags repository and open a pull request; it needs one review.",
    ),
    (
        "Is the Saffron warehouse available on weekends?",
        "Yes, though maintenance can take it down on Sunday nights.",
    ),
    (
        "How do I roll back a Tundra deploy?",
        "Redeploy the previous release tag from the deploy dashboard.",
    ),
    ("Can Gryphon auth do SAML?", "Yes, Gryphon supports SAML and OIDC for internal apps."),
    (
        "How do I add a panel to a Corvid dashboard?",
        "Edit the dashboard, add a panel and save; it's versioned.",
    ),
)

TUNING_UNCOVERED: tuple[str, ...] = (
    "Who owns the Heron payroll service?",
    "What port does the Mistral message broker use?",
    "How do I reset my password for the expense tool?",
    "Where are the Cobalt audit logs kept?",
    "Which team maintains the office wifi?",
    "How do I book a meeting room in the Lisbon office?",
    "What's the retention period for Slack messages?",
    "How do I request a new laptop?",
    "Who approves conference travel?",
    "What is the parental leave policy?",
)


# The fresh set: written after the threshold, margin and prompt were settled, and never used to
# choose them. Other invented systems, other kinds of facts, other phrasings (informal, indirect,
# questions whose answer is a consequence of the curated fact). Its figures are the held-out ones.
FRESH_SYSTEMS: tuple[System, ...] = (
    System(
        "Pelican ledger",
        "Who do I ask about Pelican ledger reconciliation errors?",
        "Reconciliation errors in Pelican ledger go to the finance engineering crew in "
        "#pelican-recon; include the batch id.",
        "#pelican-recon",
        (
            "pelican ledger won't reconcile, which channel handles that?",
            "Where should Pelican reconciliation failures be raised?",
        ),
    ),
    System(
        "Vireo metrics",
        "What's the retention of raw metrics in Vireo?",
        "Vireo keeps raw samples for 14 days, then only 5-minute rollups.",
        "14 days",
        ("How many days of raw Vireo metrics are kept?",),
    ),
    System(
        "Drift scheduler",
        "How do I pause a job in the Drift scheduler?",
        "Use `drift pause <job-name>`; resume it later with `drift resume <job-name>`.",
        "drift pause",
        (
            "what command stops a Drift scheduled job for a while?",
            "Can I temporarily suspend a Drift job? how?",
        ),
    ),
    System(
        "Harbor registry",
        "What is the address of the Harbor image registry?",
        "Push images to registry.harbor.corp:5000; pulls work without login inside the VPC.",
        "registry.harbor.corp",
        ("where do we push container images for Harbor?",),
    ),
    System(
        "Mosaic translations",
        "Who approves new Mosaic translation strings?",
        "The localisation desk approves them in #mosaic-l10n within two working days.",
        "#mosaic-l10n",
        (
            "which channel reviews Mosaic strings before they ship?",
            "I added Mosaic translations, who signs them off?",
        ),
    ),
    System(
        "Cinder build cache",
        "How big is the Cinder build cache per team?",
        "Each team gets 200 GB in Cinder; the oldest entries are evicted first.",
        "200 GB",
        ("what's the Cinder cache quota for a team?",),
    ),
    System(
        "Tern email relay",
        "What SMTP port does the Tern relay accept?",
        "Tern accepts mail on port 2525 with STARTTLS; port 25 is blocked.",
        "2525",
        ("which port should apps use to send mail through Tern?", "Tern relay SMTP port?"),
    ),
    System(
        "Basalt database",
        "How often is the Basalt database snapshotted?",
        "Basalt takes a snapshot every 6 hours and keeps the last 28.",
        "6 hours",
        ("how frequently does Basalt get snapshots?",),
    ),
    System(
        "Aurora SSO",
        "Where do I register a new app with Aurora SSO?",
        "Register it at idp.aurora.internal/apps and pick the OIDC template.",
        "idp.aurora.internal",
        (
            "how do I add my service to Aurora single sign-on?",
            "what's the portal for onboarding an app onto Aurora SSO?",
        ),
    ),
    System(
        "Wren feature store",
        "Which team runs the Wren feature store?",
        "The ML platform team runs Wren; file issues with the label wren-fs.",
        "wren-fs",
        ("who maintains the Wren feature store and how do I file a bug?",),
    ),
    System(
        "Lattice API",
        "What is the Lattice API rate limit?",
        "Lattice allows 1200 requests per minute per token; ask for more in the quota form.",
        "1200",
        (
            "how many calls per minute can I make to Lattice?",
            "I'm getting throttled by Lattice, what's the limit?",
        ),
    ),
    System(
        "Quill docs site",
        "How do I publish to the Quill docs site?",
        "Merge to the docs branch and run `quill publish --site internal`.",
        "quill publish",
        ("what's the command that deploys Quill documentation?",),
    ),
    System(
        "Garnet payments",
        "What is the Garnet payments settlement cutoff?",
        "Garnet's daily settlement cutoff is 16:30 UTC; later payments settle the next day.",
        "16:30",
        (
            "By what time must Garnet payments be in to settle today?",
            "when does Garnet close the daily settlement?",
        ),
    ),
    System(
        "Osprey mobile backend",
        "Which region hosts the Osprey mobile backend?",
        "Osprey runs in the eu-west-3 region, with a warm standby in eu-central-1.",
        "eu-west-3",
        ("where is Osprey's backend deployed, which region?",),
    ),
    System(
        "Fennel log search",
        "How far back can I search logs in Fennel?",
        "Fennel indexes the last 30 days; older logs are in cold storage under fennel-archive.",
        "30 days",
        ("what's the log search window in Fennel?", "Can Fennel find logs from two months ago?"),
    ),
    System(
        "Slate CI secrets",
        "How do I add a secret to Slate CI?",
        "Run `slate secrets add NAME` in the repo; secrets are scoped to one pipeline.",
        "slate secrets add",
        ("what's the way to store a token for a Slate pipeline?",),
    ),
    System(
        "Kite status page",
        "Who can post on the Kite status page?",
        "Only incident commanders can post; request the role in #kite-status-admins.",
        "#kite-status-admins",
        (
            "how do I get permission to update the Kite status page?",
            "I need to publish an incident on Kite status, who do I ask?",
        ),
    ),
    System(
        "Meridian warehouse",
        "What's the Meridian warehouse's connection host?",
        "Connect to meridian-dw.prod.internal on port 5439 with your own credentials.",
        "meridian-dw.prod.internal",
        ("what host do I point my SQL client at for Meridian?",),
    ),
    System(
        "Yarrow onboarding",
        "How long does Yarrow account provisioning take?",
        "Yarrow provisions new accounts within 4 hours of the ticket being approved.",
        "4 hours",
        (
            "How soon after approval is a Yarrow account ready?",
            "when will my new Yarrow account be usable?",
        ),
    ),
    System(
        "Thistle load tests",
        "Where do I book a Thistle load test slot?",
        "Book it on the calendar named thistle-loadtest; slots are two hours each.",
        "thistle-loadtest",
        ("how do I reserve time for a Thistle load test?",),
    ),
)

FRESH_DISTRACTORS: tuple[tuple[str, str], ...] = (
    ("How do I export Pelican ledger entries?", "Use the export tab; CSV files arrive by email."),
    (
        "Does Vireo support custom dashboards?",
        "Yes, build them in the Vireo UI and share the link.",
    ),
    ("Why did my Drift job run twice?", "Drift retries a job once when its worker dies mid-run."),
    (
        "Can I delete old images from Harbor?",
        "Yes, tag retention rules remove untagged images every week.",
    ),
    (
        "How do I get an Aurora SSO admin role?",
        "Ask your manager to approve a request for the aurora-admins group.",
    ),
    ("Is there a Lattice API sandbox?", "Yes, lattice-sandbox mirrors production with fake data."),
    ("Can Garnet refund a payment?", "Refunds are issued from the Garnet console within 90 days."),
    (
        "How do I rotate the Meridian warehouse password?",
        "Use the vault rotation job called meridian-rotate.",
    ),
    (
        "Who reviews Quill docs changes?",
        "Any technical writer; tag the docs team on the pull request.",
    ),
    ("Does the Kite status page have an API?", "Yes, a read-only JSON feed at /api/status."),
)

FRESH_UNCOVERED: tuple[str, ...] = (
    "What port does the Plover SMTP gateway use?",
    "Who approves new Heather dashboard requests?",
    "How often is the Juno cache flushed?",
    "Which region hosts the Sparrow analytics backend?",
    "How do I book a desk in the Berlin office?",
    "What is the per diem for travel to London?",
    "How do I get a second monitor?",
    "When does open enrollment for benefits start?",
    "Who runs the Friday all-hands?",
    "What's the password policy for the HR portal?",
)


@dataclass(frozen=True)
class QualitySet:
    key: str  # the JSON key
    title: str
    systems: tuple[System, ...]
    distractors: tuple[tuple[str, str], ...]
    uncovered: tuple[str, ...]

    def curated(self) -> list[tuple[str, str]]:
        """(question, answer) of every curated example: the systems' first, then the
        distractors."""
        return [(s.question, s.answer) for s in self.systems] + list(self.distractors)

    def covered(self) -> list[tuple[str, int, str]]:
        """(paraphrase, index of its curated example in :meth:`curated`, key fact)."""
        return [(p, i, s.fact) for i, s in enumerate(self.systems) for p in s.paraphrases]


QUALITY_SETS = (
    QualitySet(
        "tuning_set",
        "tuning set (defaults chosen on it)",
        TUNING_SYSTEMS,
        TUNING_DISTRACTORS,
        TUNING_UNCOVERED,
    ),
    QualitySet(
        "fresh_set", "fresh set (held out)", FRESH_SYSTEMS, FRESH_DISTRACTORS, FRESH_UNCOVERED
    ),
)
QUALITY_CHANNEL = "CBENCHQ"


def has_fact(text: str, fact: str) -> bool:
    return fact.lower() in text.lower()


def share(part: int, whole: int) -> float:
    return round(100 * part / whole, 1) if whole else float("nan")


def curated_index(qset: QualitySet, work: Path, embedder: Any) -> tuple[Any, list[int]]:  # noqa: ANN401
    """A SQLite database holding ``qset``'s curated examples, stored as curation stores them, and
    an ``Index`` synced from it. Returns the index and the example ids, in :meth:`curated`'s
    order."""
    from engine.retrieval import Index
    from storage import curation as cq
    from storage import retrieval as rq
    from storage.db import make_engine, session_scope, upgrade

    url = f"sqlite:///{work / f'quality-{qset.key}.db'}"
    upgrade(url)
    db = make_engine(url)
    ids = []
    with session_scope(db) as s:
        rq.record_channel(session=s, channel=QUALITY_CHANNEL, private=False)
        for i, (question, answer) in enumerate(qset.curated()):
            ts = f"{1_700_000_000 + i}"
            example, created = cq.save_example(
                session=s,
                fields={
                    "channel": QUALITY_CHANNEL,
                    "thread_ts": f"{ts}.000100",
                    "message_ts": f"{ts}.000200",
                    "content_hash": f"{qset.key}-{i}",
                    "messages": [
                        {"role": "user", "content": question},
                        {"role": "assistant", "content": answer},
                    ],
                },
                curator="UBENCH",
            )
            assert created
            ids.append(example.id)
    index = Index(embedder)
    with session_scope(db) as s:
        report = index.sync(session=s)
    assert report.examples == len(ids) and report.embedded == len(ids), report
    db.dispose()
    return index, ids


def quality_set(
    qset: QualitySet,
    args: argparse.Namespace,
    work: Path,
    backend: Any,  # noqa: ANN401
    embedder: Any,
    console: Any,
) -> tuple[dict, list[str]]:  # noqa: ANN401
    """The quality figures of one set, and lines that show its misses."""
    from engine.answer import GroundedAnswer, GroundingConfig, answer, build_prompt
    from engine.serving.batching import BatchingBackend

    index, ids = curated_index(qset, work, embedder)
    config = GroundingConfig(threshold=args.threshold)
    covered = [(q, ids[i], fact) for q, i, fact in qset.covered()]
    uncovered = list(qset.uncovered)

    def public(hit: Any) -> bool:  # noqa: ANN401 - an asker who sees the public channels
        return not hit.private

    # Retrieval and the abstention decision: no model calls.
    top3 = sum(
        eid in [h.example_id for h in index.search(q, k=3, allowed=public)] for q, eid, _ in covered
    )
    # the best cosine among the hits the pipeline reads (not the first fused hit's: BM25 can put a
    # hit of lower cosine first), which is what the threshold is compared with
    window = 2 * max(config.top_k, config.closest_k)

    def best_dense(q: str) -> float:
        return max(h.dense for h in index.search(q, k=window, allowed=public))

    best_covered = [best_dense(q) for q, _, _ in covered]
    best_uncovered = [best_dense(q) for q in uncovered]

    console.print(f"{qset.title}: {len(covered)} questions closed-book (one batched call)…")
    started = time.perf_counter()
    closed = backend.generate(
        [build_prompt(q, []) for q, _, _ in covered], max_new_tokens=args.max_new_tokens
    )
    closed_s = time.perf_counter() - started
    closed_hits = sum(
        has_fact(g.text, fact) for g, (_, _, fact) in zip(closed, covered, strict=True)
    )

    # Grounded: the pipeline, every question asked at once as people would, its model calls
    # batched by the wrapper /ask uses.
    console.print(f"{qset.title}: {len(covered) + len(uncovered)} questions grounded…")
    batching = BatchingBackend(backend, max_batch=8)

    def ask(q: str) -> GroundedAnswer:
        return answer(
            q,
            retriever=index,
            backend=batching,
            config=config,
            allowed=public,
            max_new_tokens=args.max_new_tokens,
        )

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(covered) + len(uncovered)) as pool:
        grounded = list(pool.map(ask, [q for q, _, _ in covered]))
        outside = list(pool.map(ask, uncovered))
    grounded_s = time.perf_counter() - started
    grounded_hits = sum(
        not a.abstained and has_fact(a.text, fact)
        for a, (_, _, fact) in zip(grounded, covered, strict=True)
    )
    reply_hits = sum(
        not a.abstained and has_fact(a.reply, fact)
        for a, (_, _, fact) in zip(grounded, covered, strict=True)
    )
    quoted = sum(a.quoted for a in grounded)
    best_source_right = sum(
        not a.abstained and a.sources[0].example_id == eid
        for a, (_, eid, _) in zip(grounded, covered, strict=True)
    )
    wrong_abstentions = sum(a.abstained for a in grounded)
    abstained = sum(a.abstained for a in outside)

    n, m = len(covered), len(uncovered)
    figures = {
        "curated_examples": len(ids),
        "covered_questions": n,
        "uncovered_questions": m,
        "source_top3_pct": share(top3, n),
        "key_fact_closed_book_pct": share(closed_hits, n),
        "key_fact_grounded_pct": share(grounded_hits, n),
        "key_fact_grounded_model_words_pct": share(reply_hits, n),
        "curated_answer_quoted_pct": share(quoted, n),
        "best_source_right_pct": share(best_source_right, n),
        "abstention_pct": share(abstained, m),
        "wrong_abstention_pct": share(wrong_abstentions, n),
        "best_dense_covered_min": round(min(best_covered), 3),
        "best_dense_covered_p10": round(sorted(best_covered)[len(best_covered) // 10], 3),
        "best_dense_uncovered_max": round(max(best_uncovered), 3),
        "closed_book_s": round(closed_s, 1),
        "grounded_s": round(grounded_s, 1),
    }

    lines = [f"{qset.title}, examples (closed-book | grounded):"]
    for (q, _, fact), c, g in list(zip(covered, closed, grounded, strict=True))[:3]:
        lines.append(
            f"- {q}  [fact: {fact}]\n    closed:   {c.text[:160]!r}\n    grounded: {g.text[:160]!r}"
        )
    misses = [
        (q, fact, a)
        for (q, _, fact), a in zip(covered, grounded, strict=True)
        if a.abstained or not has_fact(a.reply, fact)
    ]
    lines.append(
        f"{qset.title}, grounded replies without the key fact in the model's own words "
        f"({len(misses)}; what was shown):"
    )
    for q, fact, a in misses:
        used = ",".join(str(s.example_id) for s in a.sources)
        shown = "abstained" if a.abstained else ("quoted" if a.quoted else "reply")
        lines.append(
            f"- {q}  [fact: {fact}; sources {used or 'none'}; {shown}]\n    {a.text[:200]!r}"
        )
    wrong = [(q, a) for q, a in zip(uncovered, outside, strict=True) if not a.abstained]
    lines.append(f"{qset.title}, uncovered questions answered anyway ({len(wrong)}):")
    for q, a in wrong:
        lines.append(f"- {q}  [best match {a.sources[0].dense:.2f}: {a.sources[0].question}]")
    return figures, lines


QUALITY_ROWS = (  # (figure, label)
    ("source_top3_pct", "correct source in top 3 (% of paraphrases)"),
    ("key_fact_closed_book_pct", "key fact, closed-book (%)"),
    ("key_fact_grounded_pct", "key fact, grounded: what is shown (%)"),
    ("key_fact_grounded_model_words_pct", "  of it in the model's own words (%)"),
    ("curated_answer_quoted_pct", "  curated answer quoted instead (%)"),
    ("best_source_right_pct", "  best source the right one (%)"),
    ("abstention_pct", "abstention on uncovered questions (%)"),
    ("wrong_abstention_pct", "wrong abstentions (% of paraphrases)"),
    ("best_dense_covered_min", "best cosine, paraphrases: min"),
    ("best_dense_covered_p10", "best cosine, paraphrases: p10"),
    ("best_dense_uncovered_max", "best cosine, uncovered: max"),
    ("closed_book_s", "closed-book run (s)"),
    ("grounded_s", "grounded run (s)"),
)


def quality_section(
    args: argparse.Namespace,
    work: Path,
    console: Any,  # noqa: ANN401
) -> tuple[dict, list[str]]:
    """Both quality sets on one loaded model: their figures, and lines that show the misses."""
    from engine.answer import GroundingConfig
    from engine.basemodel import ensure_base_model
    from engine.retrieval import MiniLMEmbedder
    from engine.serving.inprocess import InProcessBackend

    home = Path(os.environ.get("THREADTUNE_HOME") or work)
    console.print("Loading the base model (in-process backend)…")
    base = ensure_base_model(home, os.environ.get("BASE_MODEL", "smollm2-135m-instruct"))
    backend = InProcessBackend(base, name="bench")
    embedder = MiniLMEmbedder()
    config = GroundingConfig(threshold=args.threshold)
    figures: dict = {
        "model": base.name,
        "backend": "in-process",
        "retriever": "engine.retrieval.Index (MiniLM + BM25, reciprocal rank fusion) on SQLite",
        "threshold": config.threshold,
        "margin": config.margin,
        "top_k": config.top_k,
        "quote_when_missing": config.quote_when_missing,
        "max_new_tokens": args.max_new_tokens,
    }
    details: list[str] = []
    for qset in QUALITY_SETS:
        found, lines = quality_set(qset, args, work, backend, embedder, console)
        figures[qset.key] = found
        details += lines
    return figures, details


def main() -> int:
    from engine.answer import GroundingConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", choices=("quality", "speed"), help="run one half only (default: both)"
    )
    parser.add_argument(
        "--examples", type=int, default=50_000, help="speed: examples indexed (default 50,000)"
    )
    parser.add_argument(
        "--embedded",
        type=int,
        default=2_000,
        help="speed: of them really embedded, for the throughput (default 2,000)",
    )
    parser.add_argument(
        "--queries", type=int, default=300, help="speed: searches timed (default 300)"
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="torch's threads (default 0: one per core used)",
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=64, help="quality: tokens per answer (default 64)"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=GroundingConfig().threshold,
        help="quality: the abstention threshold (default GroundingConfig's)",
    )
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    progress, out = Console(stderr=True), Console(width=110)
    cores = pin_cores(CORES, args.torch_threads)
    import torch

    # other work on the machine shows here: the figures are only comparable at a similar load
    figures: dict = {
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
        "load_average_1m_start": round(os.getloadavg()[0], 2),
    }
    checks: list[dict] = []
    tables: list[Table] = []
    details: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tt-bench-grounding-") as tmp:
        if args.only in (None, "quality"):
            quality, details = quality_section(args, Path(tmp), progress)
            figures["quality"] = quality
            sets = [s for s in QUALITY_SETS if s.key in quality]
            table = Table(
                title=f"Answer quality: {quality['model']}, {quality['backend']} backend, "
                f"threshold {quality['threshold']}, closed-book vs grounded ({cores} cores)"
            )
            table.add_column("figure")
            for qset in sets:
                table.add_column(qset.title, justify="right")
            table.add_column("target", justify="right")
            for key, label in QUALITY_ROWS:
                op, goal = QUALITY_TARGETS.get(key, ("", ""))
                cells = []
                for qset in sets:
                    value = quality[qset.key][key]
                    verdict = ""
                    if op:
                        ok = met(value, op, goal)
                        verdict = " ok" if ok else " MISSED"
                        checks.append(
                            {
                                "figure": key,
                                "set": qset.key,
                                "value": value,
                                "target": f"{op} {goal}",
                                "pass": ok,
                            }
                        )
                    cells.append(f"{value}{verdict}")
                table.add_row(label, *cells, f"{op} {goal}".strip())
            tables.append(table)
        if args.only in (None, "speed"):
            rows, speed = speed_section(args, Path(tmp), progress)
            figures["speed"] = speed
            table = Table(title=f"Retrieval speed at {args.examples:,} examples ({cores} cores)")
            table.add_column("what")
            table.add_column("figure", justify="right")
            table.add_column("target", justify="right")
            for what, figure, key in rows:
                target = ""
                if key in SPEED_TARGETS:
                    op, goal = SPEED_TARGETS[key]
                    ok = met(speed[key], op, goal)
                    figure += " ok" if ok else " MISSED"
                    target = f"{op} {goal} ms"
                    checks.append(
                        {
                            "figure": key,
                            "set": "speed",
                            "value": speed[key],
                            "target": f"{op} {goal}",
                            "pass": ok,
                        }
                    )
                table.add_row(what, figure, target)
            tables.append(table)
    figures["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    figures["targets"] = {
        **({} if "quality" not in figures else QUALITY_TARGETS),
        **({} if "speed" not in figures else SPEED_TARGETS),
    }
    figures["targets"] = {k: f"{op} {goal}" for k, (op, goal) in figures["targets"].items()}
    figures["checks"] = checks
    figures["all_pass"] = all(c["pass"] for c in checks)
    figures["fresh_set_and_speed_pass"] = all(c["pass"] for c in checks if c["set"] != "tuning_set")
    for line in details:
        out.print(line, markup=False, highlight=False)
    for table in tables:
        out.print(table)
    missed = [f"{c['set']} {c['figure']} {c['value']}" for c in checks if not c["pass"]]
    out.print(
        f"load average {figures['load_average_1m_start']} → {figures['load_average_1m_end']}; "
        + (f"missed: {', '.join(missed)}" if missed else "every target met"),
        markup=False,
        highlight=False,
    )
    sys.stdout.flush()
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
