"""One question in, one grounded answer out: retrieve, decide, prompt, generate.

Every Slack surface (``/ask``, @mentions, DMs, the assistant pane) and ``threadtune ask`` call
:func:`answer`. The steps:

1. **Retrieve** the nearest curated examples the asker may see (``allowed`` goes to the index,
   which drops the others before ranking, so a private thread can't even push an allowed one out of
   the top k).
2. **Decide.** Hits whose ``dense`` similarity is at least ``config.threshold``, and no more than
   ``config.margin`` below the best hit's, may ground the answer; the first ``top_k`` of them, in
   the index's order, become the context. With none, the
   pipeline abstains **without calling the model**: a sentence that nothing curated answers this yet
   and the closest threads (all below the threshold), which the surface shows with their links.
3. **Prompt** with :func:`engine.answer.prompt.build_prompt` (context as data, instruction after
   it, the thread's earlier turns as prior turns), **generate** with the backend, and drop any
   echo of the prompt's scaffolding from the reply (:func:`engine.answer.prompt.clean_reply`).
4. **Check** that the reply carries the best curated answer's verbatim facts (a channel, a port,
   a command…); when it carries none, the curated answer, marked as such, is shown instead of the
   reply (``quote_when_missing``; the reply stays in :attr:`GroundedAnswer.reply`). Measured on
   ``bench/grounding.py``'s tuning set: the untuned SmolLM2-135M-Instruct, given the right
   context, still dropped or garbled the key fact in 9 of 30 answers, and 5 of those 9 stated
   another channel, number or hostname in its place; a model trained with context should rarely
   need it.

The sources of an answer are exactly the examples that were in its prompt, numbered as the model
saw them. With grounding off, the question goes to the model closed-book, as ``/ask`` did before.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.answer.config import GroundingConfig
from engine.answer.prompt import (
    build_prompt,
    carries,
    clean_reply,
    fit_context,
    without_echoes,
)
from engine.serving.base import Message, ModelBackend


class Hit(Protocol):
    """A retrieved curated example, as ``engine.retrieval.Hit`` gives it (read-only, so a frozen
    dataclass fits)."""

    @property
    def example_id(self) -> int: ...
    @property
    def channel(self) -> str: ...
    @property
    def thread_ts(self) -> str: ...
    @property
    def private(self) -> bool: ...
    @property
    def question(self) -> str: ...
    @property
    def answer(self) -> str: ...
    @property
    def score(self) -> float:
        """Fused rank score in [0, 1]."""
        ...

    @property
    def dense(self) -> float:
        """Cosine similarity of the query to the example's question turns."""
        ...

    @property
    def rank(self) -> int: ...


class Retriever(Protocol):
    """Searches the curated examples (``engine.retrieval.Index`` is one)."""

    def search(
        self, query: str, *, k: int = 5, allowed: Callable[[Any], bool] | None = None
    ) -> Sequence[Hit]: ...


@dataclass(frozen=True)
class Source:
    """A curated thread an answer drew on (or, when abstaining, one that came closest).

    ``number`` is its ``[n]`` in the prompt (0 for the closest threads of an abstention);
    ``permalink`` is empty here and filled by the surface, which can ask Slack for it.
    """

    example_id: int
    channel: str
    thread_ts: str
    score: float
    dense: float
    question: str
    private: bool = False
    number: int = 0
    permalink: str = ""


@dataclass(frozen=True)
class GroundedAnswer:
    """What the pipeline answers. ``model`` is the adapter used (None: the base model, or no model
    at all when it abstained); ``grounded`` is true when curated context was in the prompt."""

    text: str
    abstained: bool
    sources: list[Source] = field(default_factory=list)
    closest: list[Source] = field(default_factory=list)
    model: str | None = None
    latency_ms: int = 0
    grounded: bool = False
    reply: str = ""  # the model's own words, before any quote (empty when it abstained)
    quoted: bool = False  # the best curated answer was shown instead (``quote_when_missing``)


NO_CURATED_ANSWER = "Nobody has curated an answer to this yet, so I won't guess."


def abstention_text(closest: Sequence[Source]) -> str:
    """The abstention sentence, with the closest curated questions when there are any."""
    if not closest:
        return f"{NO_CURATED_ANSWER} Nothing curated comes close."
    lines = [f"{NO_CURATED_ANSWER} The closest curated threads, which may not answer it:"]
    for i, source in enumerate(closest, 1):
        question = " ".join(source.question.split())
        if len(question) > 120:
            question = question[:119] + "…"
        lines.append(f"{i}. {question}")
    return "\n".join(lines)


def _source(hit: Hit, number: int = 0) -> Source:
    return Source(
        example_id=hit.example_id,
        channel=hit.channel,
        thread_ts=hit.thread_ts,
        score=float(hit.score),
        dense=float(hit.dense),
        question=hit.question,
        private=bool(hit.private),
        number=number,
    )


def answer(
    question: str,
    *,
    retriever: Retriever | None,
    backend: ModelBackend,
    adapter: str | None = None,
    config: GroundingConfig | None = None,
    allowed: Callable[[Any], bool] | None = None,
    history: Sequence[Message] = (),
    max_new_tokens: int = 256,
) -> GroundedAnswer:
    """Answer ``question`` from the curated examples the asker may see (see the module docstring).

    ``retriever`` None (no index yet) or ``config.enabled`` false answers closed-book.
    ``allowed`` decides which examples this asker may see; ``history`` holds the conversation's
    earlier turns, oldest first. Backend failures (:class:`engine.serving.base.BackendError`)
    propagate: the surface turns them into a sentence.
    """
    config = config or GroundingConfig()
    start = time.perf_counter()

    def elapsed() -> int:
        return int((time.perf_counter() - start) * 1000)

    if not config.enabled or retriever is None:
        prompt = build_prompt(question, [], history)
        text = backend.generate([prompt], max_new_tokens=max_new_tokens, adapter=adapter)[0].text
        text = without_echoes(text, question)
        return GroundedAnswer(
            text=text, abstained=False, model=adapter, latency_ms=elapsed(), reply=text
        )

    # Twice what is needed: a fused-rank neighbour under the threshold must not cost a place.
    wanted = 2 * max(config.top_k, config.closest_k)
    hits = list(retriever.search(question, k=wanted, allowed=allowed))
    best_score = max((h.dense for h in hits), default=0.0)
    floor = max(config.threshold, best_score - config.margin)
    usable = [h for h in hits if h.dense >= floor][: config.top_k]
    if not usable:
        closest = [_source(h) for h in hits[: config.closest_k]]
        return GroundedAnswer(
            text=abstention_text(closest),
            abstained=True,
            closest=closest,
            model=None,
            latency_ms=elapsed(),
        )

    # fit_context keeps a prefix of the hits (the best ones): those are the sources.
    used = usable[: len(fit_context(usable, config.max_context_chars))]
    prompt = build_prompt(question, used, history, max_context_chars=config.max_context_chars)
    generated = backend.generate([prompt], max_new_tokens=max_new_tokens, adapter=adapter)[0]
    # the prompt's scaffolding, our instructions and the question never reach the reply
    reply = without_echoes(clean_reply(generated.text), question)
    best = used[0].answer.strip()
    quoted = config.quote_when_missing and not carries(reply, best)
    # A reply that carries none of the curated facts is not shown beside the quote: measured, it
    # often states a different fact in their place (another channel, another number). A reply
    # that was nothing but an echo of the prompt is not shown either: the curated answer is.
    quoted = quoted or not reply
    text = quote(best) if quoted else reply
    sources = [_source(hit, number) for number, hit in enumerate(used, 1)]
    return GroundedAnswer(
        text=text,
        abstained=False,
        sources=sources,
        model=adapter,
        latency_ms=elapsed(),
        grounded=True,
        reply=reply,
        quoted=quoted,
    )


QUOTE_CHARS = 700


def quote(curated_answer: str) -> str:
    """The best curated answer, marked as such (cut to :data:`QUOTE_CHARS`; the thread itself is
    one click away in the sources)."""
    if len(curated_answer) > QUOTE_CHARS:
        curated_answer = curated_answer[: QUOTE_CHARS - 1] + "…"
    return f"The curated answer [1]: {curated_answer}"


__all__ = [
    "NO_CURATED_ANSWER",
    "GroundedAnswer",
    "Hit",
    "Retriever",
    "Source",
    "abstention_text",
    "answer",
    "quote",
]
