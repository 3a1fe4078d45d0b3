"""Block Kit for ``/ask``: the answer message (the question quoted, the answer split into sections,
the model version in a context line, 👍/👎 buttons) and its "Thinking…" placeholder; for grounded
answers, the sources line (the curated threads the answer drew on) and the abstention message.
Pure functions of plain data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ContextBlock,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)

from bot import ids
from bot.blocks.ab import escape, quoted
from bot.blocks.common import SECTION_LIMIT, chunks, context
from engine.answer import NO_CURATED_ANSWER, Source

MAX_ANSWER_SECTIONS = 45  # 50 blocks a message, minus question, context and buttons
CONTEXT_ELEMENTS = 10  # Slack's limit of elements in one context block


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


def model_line(model: str | None, seconds: float, *, cached: bool = False,
               redacted: int = 0) -> str:
    who = f"*{model}*" if model else "the base model (nothing deployed yet)"
    how = "from the answer cache" if cached else f"{seconds:.1f} s"
    hidden = (f" · {redacted} item{'' if redacted == 1 else 's'} of personal data or secrets "
              "redacted" if redacted else "")
    return f"Answered by {who} · {how}{hidden} · 👍/👎 tell the team how it did"


def placeholder_blocks(user: str, question: str, waited: float | None = None) -> list[Block]:
    status = "_Thinking…_" if waited is None else f"_Thinking… {waited:.0f} s_"
    return [question_block(user, question), SectionBlock(text=MarkdownTextObject(text=status))]


def answer_blocks(user: str, question: str, answer: str, *, model: str | None, seconds: float,
                  ask_id: int, cached: bool = False, redacted: int = 0) -> list[Block]:
    return [
        question_block(user, question),
        *answer_sections(answer),
        context(model_line(model, seconds, cached=cached, redacted=redacted)),
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


def thread_link(source: Source, names: Mapping[str, str] | None = None) -> str:
    """``<permalink|#channel>`` when the channel's name is known, else Slack's own channel mention
    (which each reader sees by name) followed by a link to the thread."""
    name = (names or {}).get(source.channel, "")
    if source.permalink and name:
        return f"<{source.permalink}|#{escape(name)}>"
    mention = f"#{escape(name)}" if name else f"<#{source.channel}>"
    return f"{mention} <{source.permalink}|(thread)>" if source.permalink else mention


def _curators(n: int | None) -> str:
    return "" if n is None else f" · {n} curator{'' if n == 1 else 's'}"


def sources_block(sources: Sequence[Source], *, names: Mapping[str, str] | None = None,
                  curators: Mapping[int, int] | None = None) -> ContextBlock | None:
    """The context line under a grounded answer: "Sources" then one element per curated thread,
    numbered as in the answer (``[1]``…), with its link, match score and curators count
    (``curators``: example id → curators). At most 10 elements (Slack's limit): the last says how
    many more there were. None without sources."""
    if not sources:
        return None
    counts = curators or {}
    elements = [f"[{s.number or i}] {thread_link(s, names)} · match {s.dense:.2f}"
                f"{_curators(counts.get(s.example_id))}" for i, s in enumerate(sources, 1)]
    room = CONTEXT_ELEMENTS - 1  # the first element is the label
    if len(elements) > room:
        elements = elements[: room - 1] + [f"+{len(elements) - room + 1} more"]
    return ContextBlock(elements=[MarkdownTextObject(text="*Sources*")]
                        + [MarkdownTextObject(text=e[:SECTION_LIMIT]) for e in elements])


def grounded_answer_blocks(user: str, question: str, answer: str, *, model: str | None,
                           seconds: float, ask_id: int, sources: Sequence[Source],
                           cached: bool = False, names: Mapping[str, str] | None = None,
                           curators: Mapping[int, int] | None = None,
                           redacted: int = 0) -> list[Block]:
    """:func:`answer_blocks` with the sources line between the answer and the model line."""
    blocks = answer_blocks(user, question, answer, model=model, seconds=seconds, ask_id=ask_id,
                           cached=cached, redacted=redacted)
    line = sources_block(sources, names=names, curators=curators)
    if line is not None:
        blocks.insert(len(blocks) - 2, line)
    return blocks


def abstention_blocks(user: str, question: str, closest: Sequence[Source], *,
                      names: Mapping[str, str] | None = None,
                      curators: Mapping[int, int] | None = None, note: str = "") -> list[Block]:
    """The message for a question nothing curated covers: the question, the sentence that there
    is no curated answer yet, the closest threads (if any) as links with their curated question,
    and ``note`` (e.g. where curators will see the question) in a context line."""
    lines = [f"*{NO_CURATED_ANSWER}*"]
    if closest:
        lines.append("The closest curated threads, which may not answer it:")
        counts = curators or {}
        for i, source in enumerate(closest[:CONTEXT_ELEMENTS], 1):
            asked = " ".join(source.question.split())
            asked = asked if len(asked) <= 150 else asked[:149] + "…"
            lines.append(f"{i}. {thread_link(source, names)}: _{escape(asked)}_"
                         f" (match {source.dense:.2f}{_curators(counts.get(source.example_id))})")
    else:
        lines.append("Nothing curated comes close.")
    blocks: list[Block] = [question_block(user, question),
                           *[SectionBlock(text=MarkdownTextObject(text=part))
                             for part in chunks("\n".join(lines), SECTION_LIMIT)]]
    if note:
        blocks.append(context(note))
    return blocks


def abstention_text(user: str) -> str:
    """The notification text of an abstention."""
    return f"Answer for <@{user}>: {NO_CURATED_ANSWER}"


__all__ = [
    "abstention_blocks",
    "abstention_text",
    "answer_blocks",
    "answer_sections",
    "answer_text",
    "failure_blocks",
    "grounded_answer_blocks",
    "model_line",
    "placeholder_blocks",
    "sources_block",
    "thread_link",
]
