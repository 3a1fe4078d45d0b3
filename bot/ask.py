"""``/ask``: answers from the deployed model (DESIGN.md step 6).

The flow for one question:

1. :meth:`AskService.accept` (inside Slack's 3 seconds): checks the question and the asker's rate
   limit (``ASK_RATE_LIMIT`` a minute, default 10; a refusal is a polite ephemeral sentence) and
   writes the audit row — the question redacted with ``engine.redact.redact`` — so nothing is
   lost whatever happens next.
2. :meth:`AskService.run` (a background thread): posts a "Thinking…" message in the channel,
   generates the answer (the deployed model, or the base model when nothing is deployed), edits the
   message to show how long it has waited — ``chat.update`` at most once a second — and finally
   replaces it with the answer: the question quoted, the answer split into ≤ 3,000-character
   sections, the model version in a context line and 👍/👎 buttons. The audit row gets the answer
   (redacted), the model version, the message ts, the latency and whether the cache answered.
   A failure (the model server down, vLLM unreachable) becomes a sentence in that message and in
   the audit row.

Where the answer goes: slash commands carry no ``thread_ts``, so ``/ask`` typed in a thread's
reply box cannot be told apart from one typed in the channel; the answer is always posted in the
channel, with the question quoted so it stands on its own.

The answer cache is per model version: the key is the deployment epoch (the id of the latest
deploy or rollback, :func:`storage.registry.deployment_epoch`) and the normalised question
(lower case, single spaces, trailing punctuation dropped) — exact matches only, because semantic
caches serve wrong answers to similar-looking questions. A deploy or rollback in this process
empties it; one made elsewhere (the CLI) changes the epoch, so old entries are never used again.
Hits are logged and marked ``cached`` in the audit log.

A curator's emoji on the bot's answer message curates it like any answer
(:meth:`bot.curation.CurationService.reaction_added` recognises the message by its audit row).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy.engine import Engine

from bot import ids
from bot.backends import BASE_NAME, Serving
from bot.blocks import ask as blocks
from bot.slack_api import explain
from storage import registry
from storage.db import session_scope

if TYPE_CHECKING:
    from bot.payloads import Command
    from bot.payloads_ab import BlockAction
    from bot.services import Services

log = logging.getLogger(__name__)

USAGE = "Ask me something: `/ask how do I rotate the staging database password?`"
MAX_QUESTION_CHARS = 2000


@dataclass(frozen=True)
class AskConfig:
    """How /ask behaves."""

    rate_limit: int = 10  # questions per person per window
    window_s: float = 60.0
    max_new_tokens: int = 512
    progress_interval: float = 1.0  # seconds between "Thinking…" edits; Slack allows ~1/s
    cache_size: int = 1000

    def __post_init__(self) -> None:
        if self.rate_limit < 1:
            raise ValueError(f"ASK_RATE_LIMIT must be at least 1, got {self.rate_limit}.")
        if self.window_s <= 0 or self.max_new_tokens < 1 or self.cache_size < 0:
            raise ValueError("window_s and max_new_tokens must be positive, cache_size not negative.")
        if self.progress_interval < 1.0:
            raise ValueError("progress_interval must be at least 1 second (Slack's chat.update pace).")

    @classmethod
    def from_settings(cls, settings: Any) -> AskConfig:
        return cls(rate_limit=int(getattr(settings, "ask_rate_limit", 10)),
                   max_new_tokens=int(getattr(settings, "ask_max_new_tokens", 512)))


def normalise(question: str) -> str:
    """The cache key of a question: case, spacing and trailing punctuation don't matter."""
    return re.sub(r"[\s?!.]+$", "", " ".join(question.lower().split()))


class RateLimiter:
    """At most ``limit`` accepted calls per ``window`` seconds per key (a sliding window)."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
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
    """An answer and where it came from. ``model`` None = the base model."""

    text: str
    model: str | None
    seconds: float
    cached: bool = False


class AnswerCache:
    """Answers by (deployment epoch, normalised question), least recently used dropped first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[tuple[int, str], Answer] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[int, str]) -> Answer | None:
        with self._lock:
            answer = self._items.get(key)
            if answer is not None:
                self._items.move_to_end(key)
            return answer

    def put(self, key: tuple[int, str], answer: Answer) -> None:
        if self.size == 0:
            return
        with self._lock:
            self._items[key] = answer
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True)
class AskRequest:
    """An accepted question: its audit row and where to answer."""

    ask_id: int
    user: str
    channel: str
    question: str


class AskFailed(Exception):
    """No answer; the message is the sentence for the asker."""


class AskService:
    """Accepts, answers and logs /ask questions and their 👍/👎 (see the module docstring)."""

    def __init__(self, db: Engine, client: WebClient | None, serving: Serving, config: AskConfig | None = None,
                 redact: Callable[[str], Any] | None = None) -> None:
        self.db, self.client, self.serving = db, client, serving
        self.config = config or AskConfig()
        self.limiter = RateLimiter(self.config.rate_limit, self.config.window_s)
        self.cache = AnswerCache(self.config.cache_size)
        if redact is None:
            from engine.redact import redact
        self._redact = redact
        serving.on_change(self.cache.clear)

    def redact(self, text: str) -> str:
        return self._redact(text).text

    # -- answering (Slack-free; the CLI calls this too) -------------------------------------------

    def answer(self, question: str) -> Answer:
        """The deployed model's answer (the cache's when it has one); raises :class:`AskFailed`."""
        from engine.basemodel import BaseModelError
        from engine.serving.base import BackendError

        start = time.monotonic()
        with session_scope(self.db) as s:
            model = registry.deployed_model(session=s)
            epoch = registry.deployment_epoch(session=s)
            if model is not None:
                s.expunge(model)
        key = (epoch, normalise(question))
        hit = self.cache.get(key)
        if hit is not None:
            log.info("ask cache hit (model %s, epoch %s)", hit.model or BASE_NAME, epoch)
            return Answer(hit.text, hit.model, time.monotonic() - start, cached=True)
        try:
            adapter = self.serving.adapter_for(model)
            generation = self.serving.serving().generate([[{"role": "user", "content": question}]],
                                                         max_new_tokens=self.config.max_new_tokens,
                                                         adapter=adapter)[0]
        except (BackendError, BaseModelError) as exc:
            raise AskFailed(f"I couldn't reach the model to answer this: {str(exc).rstrip('.')}. "
                            "Your question is saved in the log; please try again in a few minutes.") from exc
        except Exception as exc:
            log.exception("answering /ask failed")
            raise AskFailed("I couldn't answer this because of a problem on my side; your question is "
                            "saved in the log and an admin can find the details in the bot's log.") from exc
        answer = Answer(generation.text, model.name if model is not None else None, time.monotonic() - start)
        self.cache.put(key, answer)
        return answer

    def log_answer(self, ask_id: int, answer: Answer | None, *, error: str = "", message_ts: str = "",
                   latency: float = 0.0) -> None:
        with session_scope(self.db) as s:
            fields: dict[str, Any] = {"latency_ms": int(latency * 1000), "error": error}
            if message_ts:
                fields["message_ts"] = message_ts
            if answer is not None:
                fields.update(answer=self.redact(answer.text), model_name=answer.model or BASE_NAME,
                              cached=answer.cached)
            registry.update_ask(session=s, ask_id=ask_id, **fields)

    def open_ask(self, user: str, channel: str, question: str, *, error: str = "") -> int:
        with session_scope(self.db) as s:
            return registry.log_ask(session=s, user=user, channel=channel, question=self.redact(question),
                                    error=error).id

    # -- Slack ------------------------------------------------------------------------------------

    def accept(self, command: Command) -> AskRequest | str:
        """An accepted request, or the sentence to answer with at once (usage, rate limit)."""
        question = command.text.strip()
        if not question:
            return USAGE
        if len(question) > MAX_QUESTION_CHARS:
            return f"That question is {len(question)} characters long; please keep it under {MAX_QUESTION_CHARS}."
        wait = self.limiter.allow(command.user)
        if wait is not None:
            self.open_ask(command.user, command.channel, question, error="rate limited")
            log.info("/ask rate limit reached for %s", command.user)
            return (f"You've asked {self.config.rate_limit} questions in the last minute, which is my "
                    f"limit per person. Please try again in {max(1, round(wait))} seconds. 🙏")
        return AskRequest(self.open_ask(command.user, command.channel, question), command.user,
                          command.channel, question)

    def launch(self, request: AskRequest, tell: Callable[[str], Any]) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(request, tell), name=f"ask-{request.ask_id}", daemon=True)
        thread.start()
        return thread

    def run(self, request: AskRequest, tell: Callable[[str], Any]) -> None:
        """Post the placeholder, answer, edit the message; ``tell`` reaches the asker privately
        when the channel can't be posted to."""
        start = time.monotonic()
        user, question = request.user, request.question
        try:
            posted = self.client.chat_postMessage(
                channel=request.channel, text=f"<@{user}> asked a question; thinking…",
                blocks=[b.to_dict() for b in blocks.placeholder_blocks(user, question)],
                unfurl_links=False, unfurl_media=False)
            ts = str(posted["ts"])
        except SlackApiError as exc:
            reason = explain(exc)
            self.log_answer(request.ask_id, None, error=f"posting failed: {reason}",
                            latency=time.monotonic() - start)
            tell(f"I couldn't post the answer in this channel: {reason}")
            return
        done = threading.Event()
        last_edit: list[float] = []  # when the ticker last edited the message
        ticker = threading.Thread(target=self._tick, args=(request, ts, start, done, last_edit), daemon=True)
        ticker.start()
        answer: Answer | None = None
        error = ""
        try:
            answer = self.answer(question)
        except AskFailed as exc:
            error = str(exc)
        finally:
            done.set()
            ticker.join()
        latency = time.monotonic() - start
        if answer is not None:
            text = blocks.answer_text(user, answer.text)
            content = blocks.answer_blocks(user, question, answer.text, model=answer.model, seconds=latency,
                                           ask_id=request.ask_id, cached=answer.cached)
        else:
            text, content = error, blocks.failure_blocks(user, question, error)
        self.log_answer(request.ask_id, answer, error=error, message_ts=ts, latency=latency)
        if last_edit:  # the answer is an edit too: keep the once-a-second pace
            pause = self.config.progress_interval - (time.monotonic() - last_edit[-1])
            if pause > 0:
                time.sleep(pause)
        try:
            self.client.chat_update(channel=request.channel, ts=ts, text=text, blocks=[b.to_dict() for b in content])
        except SlackApiError as exc:
            log.warning("could not post the answer to ask %s: %s", request.ask_id, explain(exc))
            self.log_answer(request.ask_id, answer, error=f"posting failed: {explain(exc)}", message_ts=ts,
                            latency=latency)
            tell(f"I couldn't post the answer: {explain(exc)}")
        log.info("ask %s answered by %s in %.0f ms%s", request.ask_id,
                 (answer.model or BASE_NAME) if answer else "nobody", latency * 1000,
                 " (cached)" if answer is not None and answer.cached else "")

    def _tick(self, request: AskRequest, ts: str, start: float, done: threading.Event,
              last_edit: list[float]) -> None:
        """Show how long the answer is taking, one edit per ``progress_interval`` at most."""
        while not done.wait(self.config.progress_interval):
            try:
                self.client.chat_update(
                    channel=request.channel, ts=ts, text=f"<@{request.user}> asked a question; thinking…",
                    blocks=[b.to_dict() for b in blocks.placeholder_blocks(request.user, request.question,
                                                                            time.monotonic() - start)])
            except SlackApiError as exc:  # progress is a courtesy: the answer still comes
                log.debug("progress update for ask %s failed: %s", request.ask_id, explain(exc))
            last_edit.append(time.monotonic())

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
            replaced = registry.record_feedback(session=s, ask_id=ask_id, user=click.user, value=value)
        if replaced:
            return f"Your feedback on this answer is now {emoji}; it replaces your earlier click."
        return f"Thanks for the {emoji}; it's recorded."


_install_lock = threading.Lock()


def install(services: Services) -> AskService:
    """The /ask service in ``services.extras["ask"]``, on the shared backends (built on first use)."""
    from bot.backends import shared

    with _install_lock:
        service = services.extras.get("ask")
        if service is None:
            service = AskService(services.db, services.client, shared(services),
                                 AskConfig.from_settings(services.settings), redact=services.curation.redact)
            services.extras["ask"] = service
        return service


def asking(services: Services) -> AskService:
    service = services.extras.get("ask")
    return service if service is not None else install(services)
