"""Block Kit for the Unanswered list: its section of a curator's Home tab, the "Answer it" modal,
and what the asker is told once a curator answered. Pure functions of plain data."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from slack_sdk.models.blocks import (
    Block,
    ButtonElement,
    DividerBlock,
    InputBlock,
    MarkdownTextObject,
    PlainTextInputElement,
    PlainTextObject,
    SectionBlock,
)
from slack_sdk.models.views import View

from bot import ids
from bot.blocks.ab import escape, shown, slack_date
from bot.blocks.common import context

QUESTION_SHOWN = 300  # characters of a question on the Home tab
QUESTION_LIMIT = 3000  # Slack's cap on a plain-text input's initial value
ANSWER_LIMIT = 3000
BLOCKS_PER_QUESTION = 2


@dataclass(frozen=True)
class UnansweredItem:
    """One question as the Home tab shows it."""

    ask_id: int
    question: str  # as logged: redacted
    where: str  # surface (slash | mention | dm | assistant)
    channel: str
    asked_at: datetime
    times: int
    downvotes: int
    abstained: bool


def place(surface: str, channel: str) -> str:
    if surface == "assistant":
        return "in the assistant pane"
    if surface == "dm" or channel.startswith("D"):
        return "in a DM"
    how = "with /ask" if surface == "slash" else "in a thread"
    return f"{how} in <#{channel}>" if channel else how


def why(item: UnansweredItem) -> str:
    reasons = []
    if item.abstained:
        reasons.append("no curated answer covered it")
    if item.downvotes:
        reasons.append(f"answer got 👎 ×{item.downvotes}")
    return "; ".join(reasons)


def unanswered_blocks(items: list[UnansweredItem], total: int, max_blocks: int) -> list[Block]:
    """The Home tab's section (curators only): as many questions as ``max_blocks`` leaves room
    for, each with an "Answer it" button."""
    if max_blocks < 2:
        return []
    room = (max_blocks - 2) // BLOCKS_PER_QUESTION
    shown_items = items[:room]
    head = f"*Unanswered questions* ({total})"
    if not items:
        head += "\nNothing waiting: every question asked lately had a curated answer."
    elif total > len(shown_items):
        head += f" — the newest {len(shown_items)}"
    blocks: list[Block] = [DividerBlock(), SectionBlock(text=MarkdownTextObject(text=head))]
    for item in shown_items:
        text = "> " + shown(item.question, QUESTION_SHOWN).replace("\n", "\n> ")
        blocks.append(
            SectionBlock(
                block_id=f"unanswered_{item.ask_id}",
                text=MarkdownTextObject(text=text),
                accessory=ButtonElement(
                    text=PlainTextObject(text="Answer it"),
                    action_id=ids.UNANSWERED_ANSWER,
                    value=str(item.ask_id),
                    style="primary",
                ),
            )
        )
        times = f" · asked {item.times} times" if item.times > 1 else ""
        blocks.append(
            context(
                f"Asked {place(item.where, item.channel)}, {slack_date(item.asked_at)}{times}"
                f" · {why(item)}"
            )
        )
    return blocks


def answer_modal(ask_id: int, question: str, where: str, min_answer_chars: int) -> View:
    """Where a curator writes the answer; the question is editable (to fix typos)."""
    return View(
        type="modal",
        callback_id=ids.UNANSWERED_MODAL,
        private_metadata=str(ask_id),
        title=PlainTextObject(text="Answer a question"),
        submit=PlainTextObject(text="Save answer"),
        close=PlainTextObject(text="Cancel"),
        blocks=[
            SectionBlock(
                text=MarkdownTextObject(
                    text=f"Asked {where}. Your answer becomes a curated example, attributed to "
                    "you, and I use it for the next question like it. E-mail addresses, tokens "
                    "and other secrets are redacted before it is stored."
                )
            ),
            InputBlock(
                block_id=ids.UNANSWERED_QUESTION_BLOCK,
                label=PlainTextObject(text="Question"),
                element=PlainTextInputElement(
                    action_id=ids.UNANSWERED_QUESTION_INPUT,
                    multiline=True,
                    max_length=QUESTION_LIMIT,
                    initial_value=question[:QUESTION_LIMIT] or None,
                ),
            ),
            InputBlock(
                block_id=ids.UNANSWERED_ANSWER_BLOCK,
                label=PlainTextObject(text="Answer"),
                hint=PlainTextObject(text=f"At least {min_answer_chars} characters."),
                element=PlainTextInputElement(
                    action_id=ids.UNANSWERED_ANSWER_INPUT,
                    multiline=True,
                    min_length=min(min_answer_chars, ANSWER_LIMIT),
                    max_length=ANSWER_LIMIT,
                ),
            ),
        ],
    )


def notice_modal(text: str) -> View:
    """A modal that only says something (a refusal: the Home tab has no channel to answer in)."""
    return View(
        type="modal",
        title=PlainTextObject(text="Answer a question"),
        close=PlainTextObject(text="OK"),
        blocks=[SectionBlock(text=MarkdownTextObject(text=text))],
    )


def answered_text(asker: str, curator: str, question: str, answer: str) -> str:
    """What the asker is told once a curator answered their question."""
    quote = "\n".join("> " + line for line in shown(answer, 2500).split("\n"))
    return (
        f"<@{asker}> <@{curator}> answered your question “{escape(question.strip())[:300]}”:\n"
        f"{quote}\n"
        "_It's now a curated answer, so I'll use it for questions like yours._"
    )
