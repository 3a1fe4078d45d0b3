"""Turning a Slack thread into a chat example (DESIGN.md step 1). Pure functions: the bot fetches
the thread, storage keeps the result."""

from __future__ import annotations

import hashlib
import html
import json
import re
from dataclasses import dataclass, field
from typing import Any

NEUTRAL_NAME = "@user"

_USER_MENTION = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")
_CHANNEL_MENTION = re.compile(r"<#([CGD][A-Z0-9]+)(?:\|([^>]*))?>")
_SPECIAL = re.compile(r"<!(here|channel|everyone)(?:\|[^>]*)?>")
_SUBTEAM = re.compile(r"<!subteam\^[A-Z0-9]+(?:\|([^>]*))?>")
_DATE = re.compile(r"<!date\^\d+\^[^|>]*\|([^>]*)>")
_LINK = re.compile(r"<((?:https?|mailto|ftp|tel):[^|>\s]+)(?:\|([^>]*))?>")


def slack_to_text(text: str) -> str:
    """Slack markup → plain text: mentions become a neutral name, ``<url|label>`` becomes
    ``label (url)``, entities are unescaped; emoji codes stay as ``:name:``."""
    text = _USER_MENTION.sub(NEUTRAL_NAME, text)
    text = _CHANNEL_MENTION.sub(lambda m: "#" + (m.group(2) or "channel"), text)
    text = _SPECIAL.sub(lambda m: "@" + m.group(1), text)
    text = _SUBTEAM.sub(lambda m: m.group(1) or "@team", text)
    text = _DATE.sub(lambda m: m.group(1), text)

    def link(m: re.Match[str]) -> str:
        url, label = m.group(1), m.group(2)
        if url.startswith("mailto:"):
            return label or url[len("mailto:") :]
        if not label or label == url or url.endswith("//" + label) or url.endswith(label):
            return url
        return f"{label} ({url})"

    text = _LINK.sub(link, text)
    return html.unescape(text).replace("\r\n", "\n").strip()


class Refusal(Exception):
    """A curated answer that cannot become an example; ``str()`` is the sentence for the curator."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class SlackMessage:
    """The fields of a Slack message the curation rules look at."""

    ts: str
    user: str
    text: str
    thread_ts: str | None = None
    bot: bool = False

    @classmethod
    def from_api(cls, raw: dict) -> SlackMessage:
        return cls(
            ts=str(raw.get("ts", "")),
            user=str(raw.get("user") or raw.get("bot_id") or ""),
            text=str(raw.get("text") or ""),
            thread_ts=raw.get("thread_ts"),
            bot=bool(raw.get("bot_id")) or raw.get("subtype") == "bot_message",
        )


@dataclass
class ExampleDraft:
    """An example ready to store: redacted chat messages and where they came from."""

    channel: str
    thread_ts: str
    message_ts: str
    answer_user: str
    messages: list[dict[str, str]]
    redactions: dict[str, int] = field(default_factory=dict)
    asker: str = ""  # who started the thread: the question's author (``forget --user``)

    @property
    def content_hash(self) -> str:
        return content_hash(self.messages)


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def content_hash(messages: list[dict[str, str]]) -> str:
    """Hash of the conversation after normalising whitespace and case: equal hashes = duplicates."""
    canonical = json.dumps([[m["role"], normalise(m["content"])] for m in messages])
    return hashlib.sha256(canonical.encode()).hexdigest()


def build_example(
    channel: str,
    thread: list[SlackMessage],
    reacted_ts: str,
    *,
    min_answer_chars: int,
    redact=None,
) -> ExampleDraft:
    """Build the example for the reply ``reacted_ts`` in ``thread`` (parent first, in order).

    The parent and the asker's follow-ups are ``user`` turns, the reacted reply and the same
    author's earlier replies are ``assistant`` turns; other people and bots are dropped; consecutive
    turns of one role are joined. Raises :class:`Refusal` with a sentence for the curator.
    """
    if not thread:
        raise Refusal(
            "not_found", "I couldn't find that message any more; it may have been deleted."
        )
    parent = thread[0]
    if reacted_ts == parent.ts:
        raise Refusal(
            "thread_parent",
            "That's the question that starts the thread: "
            "put the emoji on the reply that answers it.",
        )
    ordered = sorted(thread[1:], key=lambda m: float(m.ts))
    answer = next((m for m in ordered if m.ts == reacted_ts), None)
    if answer is None:
        raise Refusal("not_found", "I couldn't find that reply in its thread any more.")
    if answer.bot:
        raise Refusal(
            "bot_answer", "That answer was posted by a bot; only people's answers are curated."
        )
    replies = [m for m in ordered if float(m.ts) <= float(answer.ts)]
    asker, answerer = parent.user, answer.user

    turns: list[tuple[str, str]] = []
    for message in [parent, *replies]:
        if message.bot:
            continue
        if message is parent or (message.user == asker and message.user != answerer):
            role = "user"
        elif message.user == answerer:
            role = "assistant"
        else:
            continue
        text = slack_to_text(message.text)
        if not text:
            continue
        if turns and turns[-1][0] == role:
            turns[-1] = (role, turns[-1][1] + "\n\n" + text)
        else:
            turns.append((role, text))

    final_answer = slack_to_text(answer.text)
    if not final_answer:
        raise Refusal(
            "empty_answer", "That answer has no text I can learn from (only files or attachments)."
        )
    _long_enough(final_answer, min_answer_chars)
    if not turns or turns[0][0] != "user" or turns[-1][0] != "assistant":
        raise Refusal("no_question", "I couldn't find a question before that answer in the thread.")

    messages, counts = _redacted(turns, redact)
    return ExampleDraft(
        channel=channel,
        thread_ts=parent.ts,
        message_ts=answer.ts,
        answer_user=answerer,
        messages=messages,
        redactions=counts,
    )


ANSWERED_SOURCE = "answered"
"""``Example.source`` of an example a curator wrote from the Home tab's Unanswered list."""


def answered_example(
    channel: str,
    thread_ts: str,
    message_ts: str,
    curator: str,
    question: str,
    answer: str,
    *,
    min_answer_chars: int,
    redact=None,
) -> ExampleDraft:
    """The example a curator writes for an unanswered question: the question (as the curator may
    have corrected it) as the ``user`` turn, their answer as the ``assistant`` turn, both redacted
    like any curated thread. Raises :class:`Refusal` with a sentence for the curator."""
    question, answer = question.strip(), answer.strip()
    if not question:
        raise Refusal("no_question", "The question is empty: write the question being answered.")
    if not answer:
        raise Refusal("empty_answer", "Write an answer first.")
    _long_enough(answer, min_answer_chars)
    messages, counts = _redacted([("user", question), ("assistant", answer)], redact)
    return ExampleDraft(
        channel=channel,
        thread_ts=thread_ts,
        message_ts=message_ts,
        answer_user=curator,
        messages=messages,
        redactions=counts,
    )


def _long_enough(answer: str, min_answer_chars: int) -> None:
    if len(answer) < min_answer_chars:
        raise Refusal(
            "too_short",
            f"That answer is too short to teach anything ({len(answer)} characters; "
            f"at least {min_answer_chars} are needed).",
        )


def _redacted(
    turns: list[tuple[str, str]], redact: Any
) -> tuple[list[dict[str, str]], dict[str, int]]:
    """The turns as chat messages, each redacted with ``redact`` (None: as they are), and how
    many of each kind of finding were replaced."""
    counts: dict[str, int] = {}
    messages = []
    for role, text in turns:
        if redact is not None:
            result = redact(text)
            text = result.text
            for kind, n in result.counts.items():
                counts[kind] = counts.get(kind, 0) + n
        messages.append({"role": role, "content": text})
    return messages, counts
