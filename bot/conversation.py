"""What an answer needs from Slack besides the question: the thread's earlier messages (the
conversation so far, for @mentions, DMs and the assistant pane) and, for its sources, links to the
curated threads, their channels' names and how many curators vouched for each.

Both read through the Web API and cache what does not change (permalinks, channel names) for the
life of the process; a Slack failure costs a link or a turn of history, never the answer.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from collections.abc import Mapping, Sequence

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy.engine import Engine

from engine.answer import Source
from engine.serving.base import Message
from storage import curation as curation_store
from storage import registry
from storage.db import session_scope

log = logging.getLogger(__name__)

MAX_TURN_CHARS = 1500  # one earlier message of a thread, in the prompt
MAX_THREAD_MESSAGES = 200  # read at most this much of a thread
_MENTION = re.compile(r"<@[UW][A-Z0-9]+(?:\|[^>]*)?>")


def strip_mentions(text: str) -> str:
    """A message without ``<@U…>`` mentions (the bot's own, when someone @mentions it)."""
    return " ".join(_MENTION.sub(" ", text).split())


def thread_history(
    client: WebClient,
    db: Engine,
    channel: str,
    thread_ts: str,
    *,
    before: str,
    turns: int = 8,
) -> list[Message]:
    """The thread's messages before ``before`` as chat turns, oldest first, at most ``turns``.

    People's messages are user turns (mentions stripped); the bot's are assistant turns with the
    answer it gave (from the audit log, so the model reads its answer, not the message's
    notification text). Bot messages that were no answer (a "Thinking…" placeholder, an
    abstention, a greeting) and system messages (joins, edits) are left out; consecutive turns of
    the same role are joined, as chat templates expect alternating turns.
    """
    if turns <= 0:
        return []
    messages: list[dict] = []
    try:
        for page in client.conversations_replies(channel=channel, ts=thread_ts, limit=100):
            messages.extend(page.get("messages", []))
            if len(messages) >= MAX_THREAD_MESSAGES:
                break
    except SlackApiError as exc:
        log.info(
            "could not read thread %s/%s for context: %s",
            channel,
            thread_ts,
            exc.response.get("error") if exc.response is not None else exc,
        )
        return []
    earlier = [m for m in messages if _ts(m.get("ts")) < _ts(before)]
    bot_ts = [str(m["ts"]) for m in earlier if m.get("bot_id")]
    answers: dict[str, str] = {}
    if bot_ts:
        with session_scope(db) as s:
            for ts in bot_ts:
                row = registry.ask_for_message(session=s, channel=channel, message_ts=ts)
                if row is not None and row.answer and not row.abstained and not row.error:
                    answers[ts] = row.answer
    turned: list[dict[str, str]] = []
    for m in earlier:
        if m.get("bot_id"):
            role, text = "assistant", answers.get(str(m.get("ts")), "")
        elif m.get("subtype") in (None, "thread_broadcast", "file_share"):
            role, text = "user", strip_mentions(str(m.get("text") or ""))
        else:
            continue
        text = text.strip()[:MAX_TURN_CHARS]
        if not text:
            continue
        if turned and turned[-1]["role"] == role:
            turned[-1]["content"] += "\n\n" + text
        else:
            turned.append({"role": role, "content": text})
    turned = turned[-turns:]
    while turned and turned[0]["role"] != "user":  # a conversation starts with the user
        turned.pop(0)
    return list(turned)


def _ts(value: object) -> float:
    try:
        return float(str(value))
    except ValueError:
        return 0.0


class SourceLinks:
    """Permalinks, channel names and curator counts for an answer's sources (cached)."""

    def __init__(self, client: WebClient | None, db: Engine) -> None:
        self.client, self.db = client, db
        self._permalinks: dict[tuple[str, str], str] = {}
        self._names: dict[str, str] = {}
        self._lock = threading.Lock()

    def fill(self, sources: Sequence[Source]) -> list[Source]:
        """``sources`` with their ``permalink`` (empty where Slack gave none)."""
        return [
            dataclasses.replace(s, permalink=self.permalink(s.channel, s.thread_ts))
            for s in sources
        ]

    def permalink(self, channel: str, ts: str) -> str:
        if self.client is None or not channel or not ts:
            return ""
        with self._lock:
            known = self._permalinks.get((channel, ts))
        if known is not None:
            return known
        try:
            link = str(self.client.chat_getPermalink(channel=channel, message_ts=ts)["permalink"])
        except SlackApiError as exc:
            log.info(
                "no permalink for %s/%s: %s",
                channel,
                ts,
                exc.response.get("error") if exc.response is not None else exc,
            )
            return ""
        with self._lock:
            self._permalinks[(channel, ts)] = link
        return link

    def names(self, sources: Sequence[Source]) -> Mapping[str, str]:
        """Channel id → name, for the channels of ``sources`` whose name Slack gives."""
        out: dict[str, str] = {}
        for channel in {s.channel for s in sources if s.channel}:
            name = self._name(channel)
            if name:
                out[channel] = name
        return out

    def _name(self, channel: str) -> str:
        with self._lock:
            if channel in self._names:
                return self._names[channel]
        name = ""
        if self.client is not None:
            try:
                name = str(
                    self.client.conversations_info(channel=channel)["channel"].get("name") or ""
                )
            except SlackApiError:
                name = ""  # the sources line falls back to Slack's own channel mention
        with self._lock:
            self._names[channel] = name
        return name

    def curators(self, sources: Sequence[Source]) -> Mapping[int, int]:
        """Example id → how many curators marked it."""
        if not sources:
            return {}
        with session_scope(self.db) as s:
            return {
                src.example_id: len(
                    curation_store.curators_of(session=s, example_id=src.example_id)
                )
                for src in sources
            }
