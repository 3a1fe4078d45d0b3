"""Curation: emoji on Slack answers become stored examples (DESIGN.md step 1).

The listeners call these methods after acknowledging; Slack reads happen outside any database
transaction, and each event is claimed and applied in one short transaction, so a retried or
duplicated event is applied once and a failure applies nothing.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy.engine import Engine
from sqlmodel import Session

from bot.payloads import MessageChange, Reaction
from bot.slack_api import explain, fetch_thread
from engine.curation import (
    ANSWERED_SOURCE,
    ExampleDraft,
    Refusal,
    SlackMessage,
    answered_example,
    build_example,
)
from storage import curation as q
from storage import registry, retrieval
from storage.db import session_scope
from storage.models import utcnow

log = logging.getLogger(__name__)

CHANGED = frozenset({"accepted", "excluded", "withdrawn", "updated", "deleted"})
"""Outcomes that changed which examples are current, or their text: the index must follow."""


DM_SURFACES = frozenset({"dm", "assistant"})
"""Where a question asked is seen by the asker and the bot only (``AskLog.surface``)."""


@dataclass(frozen=True)
class ResolvedAsk:
    """An ask a curator's answer resolved: where to tell its asker."""

    ask_id: int
    user: str
    channel: str
    surface: str
    thread_ts: str
    message_ts: str


@dataclass(frozen=True)
class Answered:
    """What :meth:`CurationService.answer_question` stored."""

    example_id: int
    question: str  # as stored: redacted
    answer: str  # as stored: redacted
    private: bool  # private to the question's channel
    resolved: list[ResolvedAsk]


@dataclass(frozen=True)
class CurationRules:
    curators: frozenset[str]
    curate_emoji: str
    reject_emoji: str
    ack_emoji: str
    min_answer_chars: int

    @classmethod
    def from_settings(cls, settings: Any) -> CurationRules:
        """The rules ``bot.settings.Settings`` sets (CURATORS, the emoji, MIN_ANSWER_CHARS)."""
        return cls(
            curators=frozenset(settings.curators),
            curate_emoji=settings.curate_emoji,
            reject_emoji=settings.reject_emoji,
            ack_emoji=settings.ack_emoji,
            min_answer_chars=settings.min_answer_chars,
        )


def default_redactor() -> Callable:
    from engine.redact import redact

    return redact


def _asker(thread: list[SlackMessage], thread_ts: str | None) -> str:
    """Who started the thread: the author of the example's question (``forget --user``)."""
    return next((m.user for m in thread if m.ts == thread_ts), "")


class CurationService:
    def __init__(
        self,
        db: Engine,
        client: WebClient,
        rules: CurationRules,
        redact: Callable | None = None,
        on_change: Callable[[], None] | None = None,
    ):
        self.db = db
        self.client = client
        self.rules = rules
        self.redact = redact or default_redactor()
        # Called after a committed change to the current examples (the bot syncs its index).
        self.on_change = on_change
        # Called with (what, texts) when a deletion or an exclusion removed content: the bot
        # forgets it from every other copy (bot.forget.SlackForgetter).
        self.forget: Callable[[str, list[str]], object] | None = None
        # Events about one channel are applied in order of arrival; channels run in parallel.
        self._locks = [threading.Lock() for _ in range(64)]
        # channel id → private, as conversations.info said; a channel's privacy rarely changes
        self._private: dict[str, bool] = {}

    def _changed(self, outcome: str) -> str:
        if outcome in CHANGED and self.on_change is not None:
            self.on_change()
        return outcome

    def _channel_private(self, channel: str) -> bool | None:
        """Whether Slack says ``channel`` is private (asked once per process); None when it could
        not say, which the index treats as private."""
        if channel in self._private:
            return self._private[channel]
        try:
            info = self.client.conversations_info(channel=channel)
        except SlackApiError as exc:
            log.warning("could not read whether %s is private: %s; its examples stay private to "
                        "the index until it is known", channel, explain(exc))
            return None
        private = bool(info.get("channel", {}).get("is_private", True))
        self._private[channel] = private
        return private

    def _forget(self, what: str, texts: list[str]) -> None:
        if self.forget is not None and texts:
            self.forget(what, texts)

    def _lock(self, channel: str) -> threading.Lock:
        return self._locks[zlib.crc32(channel.encode()) % len(self._locks)]

    # -- reactions ---------------------------------------------------------------------------

    def reaction_added(self, reaction: Reaction) -> str:
        """Apply a reaction; returns what happened (for logs and tests)."""
        return self._changed(self._reaction_added(reaction))

    def _reaction_added(self, reaction: Reaction) -> str:
        if reaction.name not in (self.rules.curate_emoji, self.rules.reject_emoji):
            return "ignored:emoji"
        if reaction.user not in self.rules.curators:
            return "ignored:not_curator"
        with self._lock(reaction.channel):
            if reaction.name == self.rules.curate_emoji:
                try:
                    draft = self.ask_answer_draft(reaction.channel, reaction.ts)
                except Refusal as refusal:
                    return self._refuse(reaction, refusal, None)
                if draft is not None:
                    return self._store(reaction, draft, draft.thread_ts)
            try:
                thread_ts, thread = fetch_thread(self.client, reaction.channel, reaction.ts)
            except SlackApiError as exc:
                return self._slack_failure(reaction, exc)
            if reaction.name == self.rules.reject_emoji:
                return self._reject(reaction, thread_ts or reaction.ts)
            return self._curate(reaction, thread_ts, thread)

    def _curate(self, reaction: Reaction, thread_ts: str | None, thread: list[SlackMessage]) -> str:
        try:
            draft = self.draft(reaction.channel, thread_ts, thread, reaction.ts)
        except Refusal as refusal:
            return self._refuse(reaction, refusal, thread_ts)
        return self._store(reaction, draft, thread_ts)

    def draft(
        self, channel: str, thread_ts: str | None, thread: list[SlackMessage], reacted_ts: str
    ) -> ExampleDraft:
        """The example a curate emoji on ``reacted_ts`` makes of ``thread`` (parent first;
        ``thread_ts`` None: a message outside any thread). Raises :class:`Refusal`."""
        if thread_ts is None:
            raise Refusal(
                "not_in_thread",
                "That message isn't in a thread: I learn from answers given as thread replies.",
            )
        draft = build_example(
            channel,
            thread,
            reacted_ts,
            min_answer_chars=self.rules.min_answer_chars,
            redact=self.redact,
        )
        draft.asker = _asker(thread, thread_ts)
        return draft

    def lock(self, channel: str) -> threading.Lock:
        """The lock that orders the changes to one channel's examples (one per channel stripe)."""
        return self._lock(channel)

    def ask_answer_draft(self, channel: str, ts: str) -> ExampleDraft | None:
        """The one exception to "only people's answers are curated": the bot's own ``/ask``
        answer, recognised by its audit row (channel + message ts, written only by the bot). The
        message quotes the question, so it stands alone as an example: the asked question as the
        ``user`` turn, the answer as the ``assistant`` turn, both as redacted in the audit log.
        Failed or empty answers stay refused like any bot message."""
        from storage.registry import ask_for_message

        with session_scope(self.db) as session:
            row = ask_for_message(session=session, channel=channel, message_ts=ts)
            if row is None or row.error or not row.answer.strip() or not row.question.strip():
                return None
            messages = [
                {"role": "user", "content": row.question},
                {"role": "assistant", "content": row.answer},
            ]
            model = row.model_name
        if len(row.answer.strip()) < self.rules.min_answer_chars:
            raise Refusal(
                "too_short",
                f"That answer is too short to teach anything ({len(row.answer.strip())} "
                f"characters; at least {self.rules.min_answer_chars} are needed).",
            )
        return ExampleDraft(
            channel=channel,
            thread_ts=ts,
            message_ts=ts,
            answer_user=f"model:{model}"[:32],
            messages=messages,
        )

    def _store(self, reaction: Reaction, draft: ExampleDraft, thread_ts: str | None) -> str:
        private = self._channel_private(reaction.channel)  # a Slack read: before the transaction
        with session_scope(self.db) as session:
            if not q.claim_event(
                session=session, event_id=reaction.event_id, kind="reaction_added"
            ):
                return "duplicate_event"
            if private is not None:
                retrieval.record_channel(session=session, channel=reaction.channel, private=private)
            try:
                example_id, created = self.save_draft(session, draft, reaction.user)
            except Refusal as refused:
                refusal: Refusal | None = refused
            else:
                refusal = None
        if refusal is not None:
            return self._refuse(reaction, refusal, thread_ts, claimed=True)
        if created:
            self._react(reaction.channel, reaction.ts, add=True)
        log.info(
            "curated example %s from %s/%s by %s",
            example_id,
            reaction.channel,
            reaction.ts,
            reaction.user,
        )
        return "accepted" if created else "curator_added"

    def save_draft(self, session: Session, draft: ExampleDraft, curator: str) -> tuple[int, bool]:
        """Store ``draft`` as ``curator``'s example in the caller's transaction: (example id,
        whether this created or re-activated it). Raises :class:`Refusal` for an excluded
        thread or a conversation that is already another message's example."""
        if q.is_excluded(session=session, channel=draft.channel, thread_ts=draft.thread_ts):
            raise Refusal(
                "excluded",
                "That thread was excluded by a curator with the reject emoji, "
                "so it can't become an example.",
            )
        if dup := q.find_duplicate(
            session=session,
            content_hash=draft.content_hash,
            channel=draft.channel,
            message_ts=draft.message_ts,
        ):
            raise Refusal(
                "duplicate",
                "This conversation is already an example "
                f"(from the thread {dup.channel}/{dup.thread_ts}).",
            )
        example, created = q.save_example(session=session, fields=self._fields(draft),
                                          curator=curator)
        assert example.id is not None  # flushed by save_example
        return example.id, created

    def _reject(self, reaction: Reaction, thread_ts: str) -> str:
        with session_scope(self.db) as session:
            if not q.claim_event(
                session=session, event_id=reaction.event_id, kind="reaction_added"
            ):
                return "duplicate_event"
            removed = q.exclude_thread(
                session=session, channel=reaction.channel, thread_ts=thread_ts, user=reaction.user
            )
            removed_ts = [e.message_ts for e in removed if e.status == "active"]
            texts = [m["content"] for e in removed for m in e.messages]
        self._forget(f"the excluded thread {reaction.channel}/{thread_ts}", texts)
        for ts in removed_ts:
            self._react(reaction.channel, ts, add=False)
        note = f" and removed {len(removed)} example(s) taken from it" if removed else ""
        self._ephemeral(
            reaction,
            f"Thread excluded for good{note}: it will never be used for training.",
            thread_ts,
        )
        return "excluded"

    def reaction_removed(self, reaction: Reaction) -> str:
        return self._changed(self._reaction_removed(reaction))

    def _reaction_removed(self, reaction: Reaction) -> str:
        if reaction.name != self.rules.curate_emoji or reaction.user not in self.rules.curators:
            return "ignored"
        with self._lock(reaction.channel), session_scope(self.db) as session:
            if not q.claim_event(
                session=session, event_id=reaction.event_id, kind="reaction_removed"
            ):
                return "duplicate_event"
            example = q.get_example(
                session=session, channel=reaction.channel, message_ts=reaction.ts
            )
            if example is None:
                return "no_example"
            remaining = q.remove_curator(
                session=session, example_id=example.id, user_id=reaction.user
            )
            withdrawn = remaining == 0 and example.status == "active"
            if withdrawn:
                q.withdraw(
                    session=session, example=example, reason="the last curator removed the emoji"
                )
        if withdrawn:
            self._react(reaction.channel, reaction.ts, add=False)
            return "withdrawn"
        return "curator_removed"

    # -- answers written from the Unanswered list ----------------------------------------------

    def answer_question(self, ask_id: int, curator: str, question: str, answer: str) -> Answered:
        """Store a curator's answer to an unanswered question as an example (``source`` =
        "answered", attributed to ``curator``) and mark resolved every ask of that question it
        answers. The caller checks that ``curator`` may see the question, then syncs the index
        (this does not call ``on_change``: the answer must be retrievable at once, not after the
        sync's quiet period). Raises :class:`Refusal` with a sentence for the curator.

        The example is private to the question's channel when Slack says that channel is private;
        a question from a DM or the assistant pane is answered for everyone (the curator wrote the
        answer for the team). When Slack can't say whether the channel is private, nothing is
        stored: a private channel's answer must never become public by accident."""
        with session_scope(self.db) as session:
            ask = registry.get_ask(session=session, ask_id=ask_id)
            if ask is None:
                raise Refusal("gone", "That question is no longer in my log.")
            if ask.resolved_by or ask.resolved_example_id is not None:
                raise Refusal("answered", f"<@{ask.resolved_by}> already answered that question.")
            channel, surface = ask.channel, ask.surface
            message_ts, thread_ts = ask.message_ts, ask.thread_ts
        in_dm = surface in DM_SURFACES or channel.startswith("D")
        private = False
        if not in_dm:
            known = self._channel_private(channel)  # a Slack read: before the transaction
            if known is None:
                raise Refusal(
                    "visibility_unknown",
                    f"I couldn't check with Slack whether <#{channel}> is private, so I didn't "
                    "save the answer (it must not reach people outside a private channel). "
                    "Please try again in a minute.",
                )
            private = known
        with self._lock(channel), session_scope(self.db) as session:
            # the answer's place: the bot's answer message, unless it has none (the answer was
            # never posted) or that message is an example already (its emoji-curated answer);
            # then a synthetic ts, which no Slack event can ever name, keeps (channel,
            # message_ts) unique
            if not message_ts or q.get_example(
                session=session, channel=channel, message_ts=message_ts
            ):
                message_ts = f"ask:{ask_id}"
            draft = answered_example(
                channel,
                thread_ts or message_ts,
                message_ts,
                curator,
                question,
                answer,
                min_answer_chars=self.rules.min_answer_chars,
                redact=self.redact,
            )
            if not in_dm:
                retrieval.record_channel(session=session, channel=channel, private=private)
            if q.is_excluded(session=session, channel=channel, thread_ts=draft.thread_ts):
                raise Refusal(
                    "excluded",
                    "A curator excluded that thread with the reject emoji, so nothing from it "
                    "becomes an example.",
                )
            if dup := q.find_duplicate(
                session=session,
                content_hash=draft.content_hash,
                channel=channel,
                message_ts=draft.message_ts,
            ):
                raise Refusal(
                    "duplicate", f"That question and answer are already example #{dup.id}."
                )
            fields = {**self._fields(draft), "source": ANSWERED_SOURCE}
            example, _ = q.save_example(session=session, fields=fields, curator=curator)
            assert example.id is not None  # flushed by save_example
            marked = registry.mark_resolved(
                session=session,
                ask_id=ask_id,
                example_id=example.id,
                by=curator,
                channels=[channel] if private else None,
            )
            if not marked:  # another curator's answer committed first: keep theirs
                raise Refusal("answered", "Another curator answered that question a moment ago.")
            resolved = [
                ResolvedAsk(a.id, a.user, a.channel, a.surface, a.thread_ts, a.message_ts)
                for a in marked
                if a.id is not None
            ]
            answered = Answered(
                example.id, draft.messages[0]["content"], draft.messages[1]["content"],
                private, resolved,
            )
        log.info("curator %s answered ask %s as example %s (%d asks resolved)",
                 curator, ask_id, answered.example_id, len(resolved))
        return answered

    # -- edits and deletions -----------------------------------------------------------------

    def message_changed(self, change: MessageChange) -> str:
        return self._changed(self._message_changed(change))

    def _message_changed(self, change: MessageChange) -> str:
        thread_ts = change.thread_ts or change.ts
        with self._lock(change.channel):
            with session_scope(self.db) as session:
                affected = q.examples_in_thread(
                    session=session, channel=change.channel, thread_ts=thread_ts
                )
                if not affected:
                    q.claim_event(session=session, event_id=change.event_id, kind=change.kind)
                    return "no_example"
            if change.kind == "deleted" and change.ts == thread_ts:
                return self._delete(change, thread_ts, every=True)
            if change.kind == "deleted" and any(e.message_ts == change.ts for e in affected):
                return self._delete(change, thread_ts, every=False)
            try:
                _, thread = fetch_thread(self.client, change.channel, thread_ts)
            except SlackApiError as exc:
                log.warning(
                    "could not re-read thread %s/%s after an edit: %s",
                    change.channel,
                    thread_ts,
                    explain(exc),
                )
                return "slack_error"
            return self._rederive(change, thread)

    def _delete(self, change: MessageChange, thread_ts: str, *, every: bool) -> str:
        with session_scope(self.db) as session:
            if not q.claim_event(session=session, event_id=change.event_id, kind=change.kind):
                return "duplicate_event"
            texts = []
            for example in q.examples_in_thread(
                session=session, channel=change.channel, thread_ts=thread_ts
            ):
                if every or example.message_ts == change.ts:
                    texts += [m["content"] for m in example.messages]
                    session.delete(example)
        self._forget(f"the deleted message {change.channel}/{change.ts}", texts)
        return "deleted"

    def _rederive(self, change: MessageChange, thread: list[SlackMessage]) -> str:
        outcome = "updated"
        before: set[str] = set()
        after: set[str] = set()
        with session_scope(self.db) as session:
            if not q.claim_event(session=session, event_id=change.event_id, kind=change.kind):
                return "duplicate_event"
            thread_ts = change.thread_ts or change.ts
            for example in q.examples_in_thread(
                session=session, channel=change.channel, thread_ts=thread_ts
            ):
                if example.source == ANSWERED_SOURCE:
                    continue  # a curator wrote it: nothing in the thread's text derives it
                try:
                    draft = build_example(
                        change.channel,
                        thread,
                        example.message_ts,
                        min_answer_chars=self.rules.min_answer_chars,
                        redact=self.redact,
                    )
                except Refusal as refusal:
                    before.update(m["content"] for m in example.messages)
                    q.withdraw(session=session, example=example, reason=f"after an edit: {refusal}")
                    outcome = "withdrawn"
                    continue
                if example.status == "active" or example.status_reason.startswith("after an edit"):
                    fields = self._fields(draft, _asker(thread, thread_ts))
                    before.update(m["content"] for m in example.messages)
                    after.update(m["content"] for m in draft.messages)
                    if any(getattr(example, key) != value for key, value in fields.items()):
                        # the index follows ``updated_at``: without it an edit is never seen
                        example.updated_at = utcnow()
                    for key, value in fields.items():
                        setattr(example, key, value)
                    if example.status_reason.startswith("after an edit") and q.curators_of(
                        session=session, example_id=example.id
                    ):
                        example.status, example.status_reason = "active", ""
                    session.add(example)
        if change.kind == "deleted":  # a turn in the middle of a thread: forget what it said
            self._forget(
                f"the deleted message {change.channel}/{change.ts}", sorted(before - after)
            )
        return outcome

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _fields(draft: ExampleDraft, asker: str = "") -> dict:
        return {
            "question_user": asker or draft.asker,
            "channel": draft.channel,
            "thread_ts": draft.thread_ts,
            "message_ts": draft.message_ts,
            "answer_user": draft.answer_user,
            "messages": draft.messages,
            "redactions": draft.redactions,
            "content_hash": draft.content_hash,
        }

    def _refuse(
        self, reaction: Reaction, refusal: Refusal, thread_ts: str | None, *, claimed: bool = False
    ) -> str:
        if not claimed:
            with session_scope(self.db) as session:
                if not q.claim_event(
                    session=session, event_id=reaction.event_id, kind="reaction_added"
                ):
                    return "duplicate_event"
        self._ephemeral(reaction, f"I didn't save that answer as an example: {refusal}", thread_ts)
        return f"refused:{refusal.code}"

    def _slack_failure(self, reaction: Reaction, exc: SlackApiError) -> str:
        log.warning(
            "could not read the thread of %s/%s: %s", reaction.channel, reaction.ts, explain(exc)
        )
        self._ephemeral(
            reaction,
            f"I couldn't read that thread, so nothing was saved: {explain(exc)} "
            "Remove the emoji and add it again to retry.",
            None,
        )
        return "slack_error"

    def _ephemeral(self, reaction: Reaction, text: str, thread_ts: str | None) -> None:
        try:
            kwargs = {"thread_ts": thread_ts} if thread_ts else {}
            self.client.chat_postEphemeral(
                channel=reaction.channel, user=reaction.user, text=text, **kwargs
            )
        except SlackApiError as exc:
            log.warning(
                "could not tell %s in %s: %s", reaction.user, reaction.channel, explain(exc)
            )

    def react(self, channel: str, ts: str, *, add: bool) -> None:
        """Add (or remove) the acknowledgement emoji on a curated message."""
        self._react(channel, ts, add=add)

    def _react(self, channel: str, ts: str, *, add: bool) -> None:
        try:
            if add:
                self.client.reactions_add(channel=channel, timestamp=ts, name=self.rules.ack_emoji)
            else:
                self.client.reactions_remove(
                    channel=channel, timestamp=ts, name=self.rules.ack_emoji
                )
        except SlackApiError as exc:
            if exc.response.get("error") not in (
                "already_reacted",
                "no_reaction",
                "message_not_found",
            ):
                log.warning(
                    "could not %s the acknowledgement on %s/%s: %s",
                    "add" if add else "remove",
                    channel,
                    ts,
                    explain(exc),
                )
