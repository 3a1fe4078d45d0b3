"""Block Kit for ``/ask``: the answer message (the question quoted, the answer split into sections,
the model version in a context line, 👍/👎 buttons) and its "Thinking…" placeholder. Pure
functions of plain data."""

from __future__ import annotations

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)

from bot import ids
from bot.blocks.ab import escape, quoted
from bot.blocks.common import SECTION_LIMIT, chunks, context

MAX_ANSWER_SECTIONS = 45  # 50 blocks a message, minus question, context and buttons


def question_block(user: str, question: str) -> SectionBlock:
    return SectionBlock(text=MarkdownTextObject(text=f"<@{user}> asked:\n{quoted(question)}"))


def answer_sections(answer: str) -> list[SectionBlock]:
    """The answer as text (escaped: model output must not ping or link), one section per
    ≤ 3,000 characters, split at line breaks or spaces."""
    parts = chunks(escape(answer.strip()) or "_(the model gave an empty answer)_", SECTION_LIMIT)
    if len(parts) > MAX_ANSWER_SECTIONS:
        parts = parts[:MAX_ANSWER_SECTIONS]
        parts[-1] = parts[-1][: SECTION_LIMIT - 40] + "… _(answer cut)_"
    return [SectionBlock(text=MarkdownTextObject(text=part)) for part in parts]


def model_line(model: str | None, seconds: float, *, cached: bool = False) -> str:
    who = f"*{model}*" if model else "the base model (nothing deployed yet)"
    how = "from the answer cache" if cached else f"{seconds:.1f} s"
    return f"Answered by {who} · {how} · 👍/👎 tell the team how it did"


def placeholder_blocks(user: str, question: str, waited: float | None = None) -> list[Block]:
    status = "_Thinking…_" if waited is None else f"_Thinking… {waited:.0f} s_"
    return [question_block(user, question), SectionBlock(text=MarkdownTextObject(text=status))]


def answer_blocks(user: str, question: str, answer: str, *, model: str | None, seconds: float,
                  ask_id: int, cached: bool = False) -> list[Block]:
    return [
        question_block(user, question),
        *answer_sections(answer),
        context(model_line(model, seconds, cached=cached)),
        ActionsBlock(
            block_id=f"ask_feedback_{ask_id}",
            elements=[
                ButtonElement(
                    text=PlainTextObject(text="👍", emoji=True),
                    action_id=ids.ASK_UP,
                    value=str(ask_id),
                ),
                ButtonElement(
                    text=PlainTextObject(text="👎", emoji=True),
                    action_id=ids.ASK_DOWN,
                    value=str(ask_id),
                ),
            ],
        ),
    ]


def failure_blocks(user: str, question: str, reason: str) -> list[Block]:
    return [question_block(user, question), context(f":warning: {reason}")]


def answer_text(user: str, answer: str) -> str:
    """The notification text (what shows where blocks can't)."""
    first = answer.strip().split("\n", 1)[0]
    return f"Answer for <@{user}>: {escape(first[:150])}{'…' if len(first) > 150 else ''}"


__all__ = [
    "answer_blocks",
    "answer_sections",
    "answer_text",
    "failure_blocks",
    "model_line",
    "placeholder_blocks",
]
