"""``/ask``: answers from the deployed model (DESIGN.md step 6).

The flow for one question:

1. :meth:`AskService.accept` (inside Slack's 3 seconds): checks the question and the asker's rate
   limit (``ASK_RATE_LIMIT`` a minute, default 10; a refusal is a polite ephemeral sentence) and
   writes the audit row — the question redacted with ``engine.redact.redact`` — so nothing is
   lost whatever happens next.
2. :meth:`AskService.run` (on the process's bounded pool, :mod:`bot.work`): posts a "Thinking…"
   message in the channel, generates the answer (the deployed model, or the base model when nothing
   is deployed), edits the message to show how long it has waited — ``chat.update`` at most once a
   second per message, and no more than :data:`PROGRESS_EDITS_PER_MINUTE` across all answers in
   progress, since Slack allows ``chat.update`` about 50 times a minute per workspace (progress is a
   courtesy: an edit over budget is skipped) — and finally replaces it with the answer as soon as it
   is ready: the question quoted, the answer split into ≤ 3,000-character sections, the model
   version in a context line and 👍/👎 buttons. The audit row gets the answer (redacted), the model
   version, the message ts, the latency and whether the cache answered. A failure (the model server
   down, vLLM unreachable) becomes a sentence in that message and in the audit row. One progress
   thread per process makes the "Thinking…" edits of every answer in progress.
3. On shutdown (:meth:`AskService.interrupt_all`), an answer that did not finish in the grace
   period gets its message edited to say so and its audit row completed with that error.

Where the answer goes: slash commands carry no ``thread_ts``, so ``/ask`` typed in a thread's
reply box cannot be told apart from one typed in the channel; the answer is always posted in the
channel, with the question quoted so it stands on its own.

The answer cache is per model version: entries are keyed by the deployment epoch (the id of the
latest deploy or rollback, :func:`storage.registry.deployment_epoch`), so a deploy or rollback made
anywhere (the CLI too) means old answers are never served again, and one made in this process
empties the cache. Two ways to hit, tried in order:

* exact: the same normalised question (lower case, single spaces, trailing punctuation dropped);
* semantic: the question's ``all-MiniLM-L6-v2`` embedding has cosine similarity at least
  ``ASK_SEMANTIC_THRESHOLD`` (default 0.95, conservative: paraphrases of the same question score
  0.96–0.99, different questions on the same topic 0.5–0.9) with a cached question's, **and** both
  mention the same numbers and negations — embeddings hardly see "ticket 300" vs "ticket 301" or
  "how do I" vs "how do I not", and a wrong cached answer is worse than a slow right one.

A hit is answered at once, without the "Thinking…" placeholder, and marked ``cached`` in the audit
log and the context line. Counts and latencies go to :data:`bot.metrics.METRICS`.

A curator's emoji on the bot's answer message curates it like any answer
(:meth:`bot.curation.CurationService.reaction_added` recognises the message by its audit row).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy.engine import Engine

from bot import ids
from bot.backends import BASE_NAME, DeployedBackend, Serving
from bot.blocks import ask as blocks
from bot.conversation import SourceLinks, thread_history
from bot.metrics import METRICS, Metrics
from bot.payloads import BlockAction, Command
from bot.settings import Settings
from bot.slack_api import explain
from bot.work import ShuttingDown, Workers
from engine.answer import GroundingConfig, Source
from engine.answer import answer as grounded_answer
from engine.basemodel import BaseModelError
from engine.redact import redact as redact_text
from engine.retrieval import Index
from engine.serving.base import BackendError, Message
from storage import registry
from storage.db import session_scope

log = logging.getLogger(__name__)

PROGRESS_EDITS_PER_MINUTE = 30
USAGE = "Ask me something: `/ask how do I rotate the staging database password?`"
MENTION_USAGE = "Ask me something, e.g. _how do I rotate the staging database password?_"
MAX_QUESTION_CHARS = 2000
UNANSWERED_NOTE = (
    "I've put this question on the team's Unanswered list, where curators can answer it; "
    "their answer will ground mine from then on."
)
INTERRUPTED = (
    "I was restarted before I could finish this answer, so it was interrupted; please ask again."
)


@dataclass(frozen=True)
class AskConfig:
    """How /ask behaves."""

    rate_limit: int = 10  # questions per person per window
    window_s: float = 60.0
    max_new_tokens: int = 512
    progress_interval: float = 1.0  # seconds between "Thinking…" edits; Slack allows ~1/s
    cache_size: int = 1000
    semantic_threshold: float = 0.95  # 0 = exact matches only
    grounding: GroundingConfig = field(default_factory=GroundingConfig)
    history_turns: int = 8  # earlier messages of a thread given to the model as conversation

    def __post_init__(self) -> None:
        if self.rate_limit < 1:
            raise ValueError(f"ASK_RATE_LIMIT must be at least 1, got {self.rate_limit}.")
        if self.window_s <= 0 or self.max_new_tokens < 1 or self.cache_size < 0:
            raise ValueError(
                "window_s and max_new_tokens must be positive, cache_size not negative."
            )
        if not 0.0 <= self.semantic_threshold <= 1.0:
            raise ValueError(
                f"ASK_SEMANTIC_THRESHOLD must be between 0 and 1, got {self.semantic_threshold}."
            )
        if self.progress_interval < 1.0:
            raise ValueError(
                "progress_interval must be at least 1 second (Slack's chat.update pace)."
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> AskConfig:
        return cls(
            rate_limit=settings.ask_rate_limit,
            max_new_tokens=settings.ask_max_new_tokens,
            semantic_threshold=settings.ask_semantic_threshold,
            grounding=GroundingConfig(
                enabled=settings.ask_grounding,
                threshold=settings.ask_grounding_threshold,
                top_k=settings.ask_grounding_top_k,
            ),
        )


def normalise(question: str) -> str:
    """The cache key of a question: case, spacing and trailing punctuation don't matter."""
    return re.sub(r"[\s?!.]+$", "", " ".join(question.lower().split()))


class RateLimiter:
    """At most ``limit`` accepted calls per ``window`` seconds per key (a sliding window)."""

    def __init__(
        self, limit: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit, self.window, self.clock = limit, window, clock
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> float | None:
        """None when allowed (and counted); else the seconds until the next call is allowed."""
        now = self.clock()
        with self._lock:
            times = self._seen.setdefault(key, deque())
            while times and times[0] <= now - self.window:
                times.popleft()
            if len(times) >= self.limit:
                return max(0.0, times[0] + self.window - now)
            times.append(now)
            return None


@dataclass(frozen=True)
class Answer:
    """An answer and where it came from. ``model`` None = the base model (or, when
    ``abstained``, no model: nothing curated covered the question and none was asked).
    ``sources`` are the curated threads in the prompt, ``closest`` those an abstention lists."""

    text: str
    model: str | None
    seconds: float
    cached: bool = False
    sources: tuple[Source, ...] = ()
    closest: tuple[Source, ...] = ()
    abstained: bool = False
    quoted: bool = False  # the best curated answer shown in place of the model's reply
    redacted: int = 0  # personal data or secrets the model wrote, replaced before posting


NEGATIONS = frozenset(
    {"not", "no", "never", "without", "none", "nothing", "cannot", "neither", "nor"}
)


def guard(question: str) -> frozenset[str]:
    """What a semantic match must share exactly: words with digits (ticket numbers, versions,
    addresses) and negations ("not", "never", "can't"…), which embeddings barely tell apart."""
    words = re.findall(r"[\w.'’-]+", question.lower().replace("’", "'"))
    return frozenset(
        w.strip(".'-")
        for w in words
        if any(c.isdigit() for c in w) or w in NEGATIONS or w.endswith("n't")
    )


@dataclass
class Lookup:
    """A question looked up in the cache: the hit (``answer``, ``match``) or what storing its
    answer needs (the key, the guard and the embedding computed for the lookup)."""

    epoch: Hashable  # what the answer depends on besides the question (see AskService.scope)
    question: str
    key: str
    guard: frozenset[str]
    vector: Any = None  # numpy array or None (no semantic matching)
    answer: Answer | None = None
    match: str = ""  # exact | semantic
    model: Any = None  # the deployed Model row (None: the base model)


@dataclass
class _Entry:
    question: str
    answer: Answer
    guard: frozenset[str]
    vector: Any


class AnswerCache:
    """Answers by (deployment epoch, question), exact or semantic (see the module docstring),
    least recently used dropped first. ``embed`` turns a question into a unit vector, or None
    while no embedding model is available."""

    def __init__(
        self, size: int, embed: Callable[[str], Any] | None = None, threshold: float = 0.95
    ) -> None:
        self.size, self.embed, self.threshold = size, embed, threshold
        self._items: OrderedDict[tuple[Hashable, str], _Entry] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def semantic(self) -> bool:
        return self.embed is not None and self.threshold > 0

    def lookup(self, epoch: Hashable, question: str) -> Lookup:
        found = Lookup(epoch, question, normalise(question), guard(question))
        with self._lock:
            entry = self._items.get((epoch, found.key))
            if entry is not None:
                self._items.move_to_end((epoch, found.key))
                found.answer, found.match = entry.answer, "exact"
                return found
            if not self.semantic or not self._items:
                return found
        found.vector = self.embed(question)  # outside the lock: it takes milliseconds
        if found.vector is None:
            return found
        # entries cached before the embedding model was ready get their vectors now
        with self._lock:
            missing = [
                e
                for k, e in self._items.items()
                if k[0] == epoch and e.guard == found.guard and e.vector is None
            ]
        for entry in missing:
            entry.vector = self.embed(entry.question)
        with self._lock:
            candidates = [
                (k, e)
                for k, e in self._items.items()
                if k[0] == epoch and e.guard == found.guard and e.vector is not None
            ]
            if candidates:
                scores = np.stack([e.vector for _, e in candidates]) @ found.vector
                best = int(np.argmax(scores))
                if scores[best] >= self.threshold:
                    key, entry = candidates[best]
                    self._items.move_to_end(key)
                    found.answer, found.match = entry.answer, "semantic"
        return found

    def put(self, found: Lookup, answer: Answer) -> None:
        if self.size == 0:
            return
        if found.vector is None and self.semantic:
            found.vector = self.embed(found.question)
        with self._lock:
            self._items[(found.epoch, found.key)] = _Entry(
                found.question, answer, found.guard, found.vector
            )
            self._items.move_to_end((found.epoch, found.key))
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


#: Where people ask: ``/ask``, an @mention in a channel or thread, a DM (the Messages tab), the
#: AI assistant pane. The audit log and the metrics say which.
SURFACES = ("slash", "mention", "dm", "assistant")
PRIVATE_SURFACES = frozenset({"dm", "assistant"})  # only the asker reads the answer


@dataclass(frozen=True)
class Audience:
    """Who will read an answer, which decides the curated examples it may draw on: public ones
    always; a private channel's in that channel (everyone there is a member); in a DM or the
    assistant pane, only the asker reads it, so the private channels they are a member of."""

    surface: str
    channel: str
    user: str
    is_member: Callable[[str, str], bool] | None = None  # (user, channel) → member?

    def may_see(self, channel: str) -> bool:
        if channel == self.channel:
            return True
        if self.surface in PRIVATE_SURFACES and self.is_member is not None:
            return self.is_member(self.user, channel)
        return False

    def allowed(self, hit: Any) -> bool:
        return not hit.private or self.may_see(hit.channel)

    def view(self, private_channels: frozenset[str]) -> tuple[str, ...]:
        """The private channels of the index this audience may see: two askers with the same
        view get the same retrieval, so they may share cached answers, and no one else may."""
        return tuple(sorted(c for c in private_channels if self.may_see(c)))


@dataclass(frozen=True)
class AskRequest:
    """An accepted question: its audit row and where to answer. ``thread_ts``: the thread the
    answer goes into ("" = the channel itself); ``message_ts``: the asker's own message (@mentions,
    DMs, the assistant pane), whose thread's earlier messages are the conversation so far."""

    ask_id: int
    user: str
    channel: str
    question: str
    accepted: float = field(default_factory=time.monotonic)  # when the question was accepted
    surface: str = "slash"
    thread_ts: str = ""
    message_ts: str = ""


class AskFailed(Exception):
    """No answer; the message is the sentence for the asker."""


@dataclass(eq=False)
class _InFlight:
    """An accepted question until its answer (or failure, or interruption) is settled. Whoever
    sets ``settling`` under ``lock`` first writes the message and the audit row; the progress
    thread edits only under ``lock`` too, so no edit lands after the answer."""

    request: AskRequest
    tell: Callable[[str], Any]
    ts: str = ""  # the "Thinking…" message, once posted
    next_tick: float = 0.0
    settling: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    settled: threading.Event = field(default_factory=threading.Event)


class AskService:
    """Accepts, answers and logs /ask questions and their 👍/👎 (see the module docstring)."""

    def __init__(
        self,
        db: Engine,
        client: WebClient | None,
        serving: Serving,
        config: AskConfig | None = None,
        redact: Callable[[str], Any] | None = None,
        embed: Callable[[str], Any] | None = None,
        metrics: Metrics | None = None,
        work: Workers | None = None,
        warm: Callable[[], None] | None = None,
        index: Callable[[], Index | None] | None = None,
        is_member: Callable[[str, str], bool] | None = None,
    ) -> None:
        """``work`` runs answers (default: a small pool of its own); ``warm`` is called when a
        question is accepted, so that slow set-up (the embedding model) starts with the first
        question rather than with the process. ``index`` gives the index of curated examples,
        synced at least once (None, or a call that returns None: answers are closed-book);
        ``is_member(user, channel)`` says whether someone may see a private channel's examples
        in their DMs and assistant threads (None: nobody does)."""
        self.db, self.client, self.serving = db, client, serving
        self._index = index
        self._is_member = is_member
        self.links = SourceLinks(client, db)
        self.config = config or AskConfig()
        self.limiter = RateLimiter(self.config.rate_limit, self.config.window_s)
        self.progress_budget = RateLimiter(PROGRESS_EDITS_PER_MINUTE, 60.0)
        self.cache = AnswerCache(self.config.cache_size, embed, self.config.semantic_threshold)
        self.metrics = metrics or METRICS
        self.work = work or Workers(4, "ask")
        self._warm = warm
        self._redact = redact or redact_text
        self._inflight: dict[int, _InFlight] = {}
        self._inflight_lock = threading.Lock()
        self._ticker: threading.Thread | None = None
        self._tick_wake = threading.Event()
        self._index_version = -1
        serving.on_change(self.cache.clear)

    def redact(self, text: str) -> str:
        return self._redact(text).text

    # -- answering (Slack-free; the CLI calls this too) -------------------------------------------

    def audience(self, request: AskRequest) -> Audience:
        return Audience(request.surface, request.channel, request.user, self._is_member)

    def index(self) -> Index | None:
        if self._index is None or not self.config.grounding.enabled:
            return None
        return self._index()

    def answer(self, request: AskRequest) -> Answer:
        """The answer for ``request`` (the cache's when it has one); raises :class:`AskFailed`."""
        found = self.lookup(request)
        return found.answer if found.answer is not None else self.generate(found, request)

    def lookup(self, request: AskRequest) -> Lookup:
        """What is deployed now and whether the cache already holds an answer for this question
        and this audience (see :meth:`scope`)."""
        start = time.monotonic()
        try:
            with session_scope(self.db) as s:
                model = registry.deployed_model(session=s)
                epoch = registry.deployment_epoch(session=s)
                if model is not None:
                    s.expunge(model)
        except Exception as exc:
            log.exception("reading the deployed model failed")
            raise AskFailed(
                "I couldn't read which model is deployed (the database didn't answer); your "
                "question is saved if the log could be written — please try again shortly."
            ) from exc
        scope = self.scope(epoch, request)
        found = self.cache.lookup(scope, request.question)
        found.model = model
        if found.answer is not None:
            hit = found.answer
            self.metrics.cache_hits.labels(found.match).inc()
            log.info(
                "ask cache hit (%s, model %s, epoch %s)", found.match, hit.model or BASE_NAME, epoch
            )
            found.answer = dataclasses.replace(hit, seconds=time.monotonic() - start, cached=True)
        return found

    def scope(self, epoch: int, request: AskRequest) -> Hashable:
        """What a cached answer depends on besides the question: the deployed model (the
        deployment epoch), what can be retrieved (the index's version) and which private
        channels the audience may see — so a private thread's answer is never served to someone
        who may not see it, and an edited or withdrawn example is never served at all. An answer
        in a thread also depends on the thread (its earlier messages were in the prompt)."""
        # an answer in a thread read the thread's earlier messages (someone's own words in a DM
        # or assistant thread): it is served again in that thread only, never to anyone else
        thread = (request.channel, request.thread_ts) if request.thread_ts else ()
        index = self.index()
        if index is None:
            return (epoch, *thread)
        if index.version != self._index_version:
            # answers of an older index can never be served again; drop them now, so that text
            # forgotten (or withdrawn) leaves the process's memory with the index's sync
            self._index_version = index.version
            self.cache.clear()
        view = self.audience(request).view(index.private_channels())
        return (epoch, index.version, view, *thread)

    def generate(
        self, found: Lookup, request: AskRequest, *, history: Sequence[Message] | None = None
    ) -> Answer:
        """A fresh answer — grounded in the curated examples this audience may see, or an
        abstention — from the model deployed at lookup time; stored in the cache unless it
        abstained (a curator may answer the question any minute)."""
        start = time.monotonic()
        model = found.model
        try:
            result = grounded_answer(
                request.question,
                retriever=self.index(),
                backend=DeployedBackend(self.serving, model),
                adapter=model.name if model is not None else None,
                config=self.config.grounding,
                allowed=self.audience(request).allowed,
                history=self.history(request) if history is None else history,
                max_new_tokens=self.config.max_new_tokens,
            )
        except (BackendError, BaseModelError) as exc:
            raise AskFailed(
                f"I couldn't reach the model to answer this: {str(exc).rstrip('.')}. "
                "Your question is saved in the log; please try again in a few minutes."
            ) from exc
        except Exception as exc:
            log.exception("answering /ask failed")
            raise AskFailed(
                "I couldn't answer this because of a problem on my side; your question is "
                "saved in the log and an admin can find the details in the bot's log."
            ) from exc
        text, redacted = result.text, 0
        if not result.abstained:
            # the model may repeat personal data or a secret it saw in training: every answer is
            # redacted before anyone sees it (curated text already was, when it was curated)
            cleaned = self._redact(text)
            text, redacted = cleaned.text, sum(cleaned.counts.values())
        answer = Answer(
            text,
            None if result.abstained else (model.name if model is not None else None),
            time.monotonic() - start,
            sources=tuple(self.links.fill(result.sources)),
            closest=tuple(self.links.fill(result.closest)),
            abstained=result.abstained,
            quoted=result.quoted,
            redacted=redacted,
        )
        if not answer.abstained:
            self.cache.put(found, answer)
        return answer

    def history(self, request: AskRequest) -> list[Message]:
        """The thread's earlier messages as conversation turns (none for ``/ask``)."""
        if not request.thread_ts or not request.message_ts or self.client is None:
            return []
        return thread_history(
            self.client,
            self.db,
            request.channel,
            request.thread_ts,
            before=request.message_ts,
            turns=self.config.history_turns,
        )

    def log_answer(
        self,
        ask_id: int,
        answer: Answer | None,
        *,
        error: str = "",
        message_ts: str = "",
        latency: float = 0.0,
    ) -> None:
        with session_scope(self.db) as s:
            fields: dict[str, Any] = {"latency_ms": int(latency * 1000), "error": error}
            if message_ts:
                fields["message_ts"] = message_ts
            if answer is not None:
                fields.update(
                    answer=self.redact(answer.text),
                    model_name="" if answer.abstained else (answer.model or BASE_NAME),
                    cached=answer.cached,
                    abstained=answer.abstained,
                    redacted=answer.redacted,
                    sources=[
                        {
                            "example_id": src.example_id,
                            "channel": src.channel,
                            "thread_ts": src.thread_ts,
                            "score": round(src.score, 4),  # fused rank score: orders hits
                            "similarity": round(src.dense, 4),  # cosine: what the threshold reads
                        }
                        for src in answer.sources
                    ],
                )
            registry.update_ask(session=s, ask_id=ask_id, **fields)

    def open_ask(
        self,
        user: str,
        channel: str,
        question: str,
        *,
        error: str = "",
        surface: str = "slash",
        thread_ts: str = "",
    ) -> int:
        with session_scope(self.db) as s:
            return registry.log_ask(
                session=s,
                user=user,
                channel=channel,
                question=self.redact(question),
                error=error,
                surface=surface,
                thread_ts=thread_ts,
            ).id

    # -- Slack ------------------------------------------------------------------------------------

    def accept(
        self,
        user: str,
        channel: str,
        text: str,
        *,
        surface: str = "slash",
        thread_ts: str = "",
        message_ts: str = "",
    ) -> AskRequest | str:
        """An accepted request, or the sentence to answer with at once (usage, rate limit).
        Every surface comes through here: one rate limit per person across all of them."""
        question = text.strip()
        if not question:
            self.metrics.asks.labels("refused", surface).inc()
            return USAGE if surface == "slash" else MENTION_USAGE
        if len(question) > MAX_QUESTION_CHARS:
            self.metrics.asks.labels("refused", surface).inc()
            return (
                f"That question is {len(question)} characters long; please keep it under "
                f"{MAX_QUESTION_CHARS}."
            )
        wait = self.limiter.allow(user)
        if wait is not None:
            self.open_ask(
                user, channel, question, error="rate limited", surface=surface, thread_ts=thread_ts
            )
            self.metrics.asks.labels("rate_limited", surface).inc()
            self.metrics.rate_limited.inc()
            log.info("ask rate limit reached for %s (%s)", user, surface)
            return (
                f"You've asked {self.config.rate_limit} questions in the last minute, which is my "
                f"limit per person. Please try again in {max(1, round(wait))} seconds. 🙏"
            )
        if self._warm is not None:
            self._warm()
        return AskRequest(
            self.open_ask(user, channel, question, surface=surface, thread_ts=thread_ts),
            user,
            channel,
            question,
            surface=surface,
            thread_ts=thread_ts,
            message_ts=message_ts,
        )

    def accept_command(self, command: Command) -> AskRequest | str:
        """``/ask``: the answer goes into the channel (a slash command carries no thread)."""
        return self.accept(command.user, command.channel, command.text)

    def launch(self, request: AskRequest, tell: Callable[[str], Any]) -> None:
        """Answer on the pool (:meth:`run`); when the process is stopping, say so at once."""
        entry = self._track(request, tell)
        try:
            self.work.submit(self._answer, entry)
        except ShuttingDown:
            self._settle(entry, None, INTERRUPTED)

    def run(self, request: AskRequest, tell: Callable[[str], Any]) -> None:
        """Answer in the channel: a cached answer at once; otherwise a placeholder that shows
        progress until the answer replaces it. ``tell`` reaches the asker privately when the
        channel can't be posted to."""
        self._answer(self._track(request, tell))

    def _answer(self, entry: _InFlight) -> None:
        if entry.settling:  # interrupted while it waited for a thread
            return
        request = entry.request
        answer: Answer | None = None
        error = ""
        try:
            found = self.lookup(request)
            if found.answer is not None:
                answer = found.answer
            elif request.surface == "assistant":
                # the assistant pane shows "is thinking…" under the thread until the bot replies
                self._assistant_status(request, "is thinking…")
                history = self.history(request)
                if not any(turn["role"] == "user" for turn in history):
                    self._assistant_title(request)
                answer = self.generate(found, request, history=history)
            else:
                with entry.lock:  # an interruption waits for the placeholder, then edits it
                    if entry.settling:
                        return
                    entry.ts, refused = self._post_placeholder(request)
                if refused:
                    self._not_posted(entry, refused)
                    return
                answer = self._generate_with_progress(entry, found)
        except AskFailed as exc:
            error = str(exc)
        except Exception:  # the row and the message are settled whatever went wrong
            log.exception("answering ask %s failed", request.ask_id)
            error = (
                "I couldn't answer this because of a problem on my side; your question is "
                "saved in the log and an admin can find the details in the bot's log."
            )
        self._settle(entry, answer, error)

    def interrupt_all(self, wait: float = 5.0) -> int:
        """Settle every answer still in progress as interrupted (shutdown, after the grace
        period): its message says so and its audit row is complete. An answer being settled
        right now gets up to ``wait`` seconds to land. Returns the number interrupted."""
        with self._inflight_lock:
            entries = list(self._inflight.values())
        interrupted = 0
        for entry in entries:
            if self._claim(entry, wait):
                self._write(entry, None, INTERRUPTED)
                interrupted += 1
            else:
                entry.settled.wait(wait)
        if interrupted:
            log.warning("%d /ask answer(s) interrupted by the shutdown", interrupted)
        return interrupted

    def in_progress(self) -> int:
        with self._inflight_lock:
            return len(self._inflight)

    def _track(self, request: AskRequest, tell: Callable[[str], Any]) -> _InFlight:
        with self._inflight_lock:
            entry = self._inflight.get(request.ask_id)
            if entry is None:
                entry = self._inflight[request.ask_id] = _InFlight(request, tell)
            return entry

    def _claim(self, entry: _InFlight, wait: float = -1) -> bool:
        """True for the one caller that settles ``entry``."""
        if not entry.lock.acquire(timeout=wait):
            return False
        try:
            if entry.settling:
                return False
            entry.settling = True
            return True
        finally:
            entry.lock.release()

    def _settle(self, entry: _InFlight, answer: Answer | None, error: str) -> None:
        if self._claim(entry):
            self._write(entry, answer, error)

    def _write(self, entry: _InFlight, answer: Answer | None, error: str) -> None:
        try:
            self._finish(entry.request, answer, entry.ts, error, entry.tell)
        finally:
            with self._inflight_lock:
                self._inflight.pop(entry.request.ask_id, None)
            entry.settled.set()

    def _post_placeholder(self, request: AskRequest) -> tuple[str, str]:
        """(the "Thinking…" message's ts, "") or ("", why the channel can't be posted to)."""
        try:
            posted = self.client.chat_postMessage(
                channel=request.channel,
                text=f"<@{request.user}> asked a question; thinking…",
                blocks=[
                    b.to_dict() for b in blocks.placeholder_blocks(request.user, request.question)
                ],
                unfurl_links=False,
                unfurl_media=False,
                **self._thread(request),
            )
            return str(posted["ts"]), ""
        except SlackApiError as exc:
            return "", explain(exc)

    @staticmethod
    def _thread(request: AskRequest) -> dict[str, str]:
        return {"thread_ts": request.thread_ts} if request.thread_ts else {}

    def _assistant_title(self, request: AskRequest) -> None:
        """An assistant thread is titled by its first question (a courtesy, like the status)."""
        title = " ".join(request.question.split())
        try:
            self.client.assistant_threads_setTitle(
                channel_id=request.channel,
                thread_ts=request.thread_ts,
                title=title if len(title) <= 80 else title[:79] + "…",
            )
        except SlackApiError as exc:
            log.debug("assistant title for ask %s failed: %s", request.ask_id, explain(exc))

    def _assistant_status(self, request: AskRequest, status: str) -> None:
        """The assistant pane's status line (a courtesy: a failure only gets logged)."""
        try:
            self.client.assistant_threads_setStatus(
                channel_id=request.channel, thread_ts=request.thread_ts, status=status
            )
        except SlackApiError as exc:
            log.debug("assistant status for ask %s failed: %s", request.ask_id, explain(exc))

    def _not_posted(self, entry: _InFlight, reason: str) -> None:
        if not self._claim(entry):
            return
        request = entry.request
        try:
            self.log_answer(
                request.ask_id,
                None,
                error=f"posting failed: {reason}",
                latency=time.monotonic() - request.accepted,
            )
            self.metrics.asks.labels("failed", request.surface).inc()
            entry.tell(f"I couldn't post the answer in this channel: {reason}")
        finally:
            with self._inflight_lock:
                self._inflight.pop(request.ask_id, None)
            entry.settled.set()

    def _generate_with_progress(self, entry: _InFlight, found: Lookup) -> Answer:
        entry.next_tick = time.monotonic() + self.config.progress_interval
        with self._inflight_lock:
            if self._ticker is None:
                self._ticker = threading.Thread(
                    target=self._progress_loop, name="ask-progress", daemon=True
                )
                self._ticker.start()
        self._tick_wake.set()
        return self.generate(found, entry.request)

    def _finish(
        self,
        request: AskRequest,
        answer: Answer | None,
        ts: str,
        error: str,
        tell: Callable[[str], Any],
    ) -> None:
        """Post or edit in the answer (or the failure sentence), then log and count it."""
        user, question = request.user, request.question
        if answer is not None and answer.abstained:
            text = blocks.abstention_text(user)
            content = blocks.abstention_blocks(
                user,
                question,
                answer.closest,
                names=self.links.names(answer.closest),
                curators=self.links.curators(answer.closest),
                note=UNANSWERED_NOTE,
            )
        elif answer is not None:
            text = blocks.answer_text(user, answer.text)
            content = blocks.grounded_answer_blocks(
                user,
                question,
                answer.text,
                model=answer.model,
                seconds=time.monotonic() - request.accepted,
                ask_id=request.ask_id,
                cached=answer.cached,
                redacted=answer.redacted,
                sources=answer.sources,
                names=self.links.names(answer.sources),
                curators=self.links.curators(answer.sources),
            )
        else:
            text, content = error, blocks.failure_blocks(user, question, error)
        payload = [b.to_dict() for b in content]
        logged = bool(ts)
        if logged:  # the audit row is complete before anyone can see (and curate) the answer
            self.log_answer(
                request.ask_id,
                answer,
                error=error,
                message_ts=ts,
                latency=time.monotonic() - request.accepted,
            )
        try:
            if ts:
                self.client.chat_update(channel=request.channel, ts=ts, text=text, blocks=payload)
            else:
                ts = str(
                    self.client.chat_postMessage(
                        channel=request.channel,
                        text=text,
                        blocks=payload,
                        unfurl_links=False,
                        unfurl_media=False,
                        **self._thread(request),
                    )["ts"]
                )
        except SlackApiError as exc:
            log.warning("could not post the answer to ask %s: %s", request.ask_id, explain(exc))
            error, logged = error or f"posting failed: {explain(exc)}", False
            tell(f"I couldn't post the answer: {explain(exc)}")
        latency = time.monotonic() - request.accepted
        if not logged:
            self.log_answer(request.ask_id, answer, error=error, message_ts=ts, latency=latency)
        outcome = "failed" if error else "abstained" if answer and answer.abstained else "answered"
        self.metrics.asks.labels(outcome, request.surface).inc()
        if not error and answer is not None:
            self.metrics.ask_latency.labels(
                cached=str(answer.cached).lower(), surface=request.surface
            ).observe(latency)
        log.info(
            "ask %s (%s) %s by %s in %.0f ms (%s)",
            request.ask_id,
            request.surface,
            outcome,
            (answer.model or BASE_NAME) if answer else "nobody",
            latency * 1000,
            "cached"
            if answer is not None and answer.cached
            else f"model {answer.seconds * 1000:.0f} ms"
            if answer is not None
            else "no answer",
        )

    def _progress_loop(self) -> None:
        """The progress thread: wakes when an answer is due an edit, sleeps while none waits."""
        while True:
            self._tick_wake.clear()
            with self._inflight_lock:
                waiting = [e for e in self._inflight.values() if e.ts and not e.settling]
            now = time.monotonic()
            for entry in waiting:
                if entry.next_tick <= now:
                    self._tick(entry)
            if waiting:
                soonest = min(e.next_tick for e in waiting)
                self._tick_wake.wait(max(0.05, soonest - time.monotonic()))
            else:
                self._tick_wake.wait()

    def _tick(self, entry: _InFlight) -> None:
        """Show how long the answer is taking: one edit per ``progress_interval`` at most, and
        only while the workspace-wide progress budget allows."""
        request = entry.request
        with entry.lock:
            if entry.settling:
                return
            if self.progress_budget.allow("progress") is not None:
                entry.next_tick = time.monotonic() + self.config.progress_interval
                return
            try:
                self.client.chat_update(
                    channel=request.channel,
                    ts=entry.ts,
                    text=f"<@{request.user}> asked a question; thinking…",
                    blocks=[
                        b.to_dict()
                        for b in blocks.placeholder_blocks(
                            request.user, request.question, time.monotonic() - request.accepted
                        )
                    ],
                )
            except SlackApiError as exc:  # progress is a courtesy: the answer still comes
                log.debug("progress update for ask %s failed: %s", request.ask_id, explain(exc))
            # the interval counts from the end of this edit: a slow call followed at once by the
            # next would reach Slack less than a second apart
            entry.next_tick = time.monotonic() + self.config.progress_interval

    # -- feedback ---------------------------------------------------------------------------------

    def feedback(self, click: BlockAction) -> str:
        """Store a 👍/👎 (one per person per answer; a later click replaces it) and say so."""
        value = ids.ASK_FEEDBACK[click.action_id]
        emoji = "👍" if value == "up" else "👎"
        try:
            ask_id = click.int_value()
        except ValueError:
            return "That button doesn't belong to an answer I know."
        with session_scope(self.db) as s:
            if registry.get_ask(session=s, ask_id=ask_id) is None:
                return "That answer is no longer in my log, so your feedback wasn't saved."
            replaced = registry.record_feedback(
                session=s, ask_id=ask_id, user=click.user, value=value
            )
        if replaced:
            return f"Your feedback on this answer is now {emoji}; it replaces your earlier click."
        return f"Thanks for the {emoji}; it's recorded."
