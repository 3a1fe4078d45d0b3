"""Block Kit for A/B rounds: the round's opening message, one message per pair, the "why?" modal
and the result with the leaderboard. Pure functions of plain data; tested without mocks.

While a round is open a pair message shows how many people voted, not how the votes split: a
visible lean pulls later voters along (herding), and the round is meant to be blind. The split
and which model wrote which answer are shown once the round closes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    InputBlock,
    MarkdownTextObject,
    PlainTextInputElement,
    PlainTextObject,
    SectionBlock,
)
from slack_sdk.models.views import View

from bot import ids
from bot.blocks.common import SECTION_LIMIT, context

SHOWN_LIMIT = SECTION_LIMIT - 100  # room for the label above a prompt or an answer
COMMENT_LIMIT = 2000


def escape(text: str) -> str:
    """Model output and prompts are shown as text: ``<!channel>`` must not ping anyone, and
    ``&``/``<``/``>`` are Slack's own control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def shown(text: str, limit: int = SHOWN_LIMIT) -> str:
    """Escaped and cut to ``limit`` characters (never inside an ``&…;`` entity)."""
    out = escape(text.strip()) or "_(empty answer)_"
    if len(out) <= limit:
        return out
    cut = out[: limit - 40]
    amp = cut.rfind("&")
    if amp > len(cut) - 6 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut.rstrip() + f"… _(cut; {len(text)} characters in all)_"


def quoted(text: str) -> str:
    return "\n".join("> " + line for line in shown(text, SHOWN_LIMIT - 200).split("\n"))


def slack_date(when: datetime) -> str:
    """A date every reader sees in their own time zone."""
    ts = int(when.timestamp())
    return f"<!date^{ts}^{{date_short_pretty}} at {{time}}|{when:%Y-%m-%d %H:%M} UTC>"


def percent(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{100 * value:.0f}%"


# -- the round's opening message ----------------------------------------------------------------


def round_blocks(
    round_id: int,
    candidate: str,
    opponent: str,
    pairs: int,
    deadline: datetime,
    *,
    status: str = "open",
) -> list[Block]:
    if status == "open":
        how = (
            f"{pairs} pairs follow. Each shows a question from the held-out test set and two "
            f"answers: one by *{candidate}*, one by *{opponent}*, in random order. Click the "
            "better answer (or *Tie* / *Both bad*); *why?* adds a comment. One vote per person "
            "per pair: a later click replaces your vote.\n"
            f"Voting closes {slack_date(deadline)}, or earlier once the result is clear."
        )
    else:
        how = (
            f"This round is closed: {candidate} against {opponent} on {pairs} pairs. "
            "The result is posted below."
        )
    return [
        HeaderBlock(text=f"Blind A/B round #{round_id}"),
        SectionBlock(text=MarkdownTextObject(text=how)),
    ]


# -- one pair -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairCard:
    """What a pair message shows. ``counts`` are by button (``"A"``, ``"B"``, ``"tie"``,
    ``"both_bad"``); ``reveal`` names the models shown as A and B once the round is closed."""

    round_id: int
    pair_id: int
    position: int
    pairs: int
    prompt: str
    answer_a: str
    answer_b: str
    counts: dict[str, int]
    closed: bool = False
    reveal: tuple[str, str] | None = None
    deadline: datetime | None = None

    @property
    def votes(self) -> int:
        return sum(self.counts.get(k, 0) for k in ("A", "B", "tie", "both_bad"))


def _button(label: str, action_id: str, value: str, style: str | None = None) -> ButtonElement:
    return ButtonElement(text=label, action_id=action_id, value=value, style=style)


def pair_text(card: PairCard) -> str:
    """The notification text of a pair message (what a screen reader or a push shows)."""
    return (
        f"A/B round #{card.round_id}, pair {card.position + 1} of {card.pairs}: "
        "which answer is better?"
    )


def pair_blocks(card: PairCard) -> list[Block]:
    label_a, label_b = "*Answer A*", "*Answer B*"
    if card.reveal:
        label_a += f" — {escape(card.reveal[0])}"
        label_b += f" — {escape(card.reveal[1])}"
    blocks: list[Block] = [
        SectionBlock(
            text=MarkdownTextObject(
                text=f"*Pair {card.position + 1} of {card.pairs}* · round #{card.round_id}\n"
                f"{quoted(card.prompt)}"
            )
        ),
        DividerBlock(),
        SectionBlock(text=MarkdownTextObject(text=f"{label_a}\n{shown(card.answer_a)}")),
        SectionBlock(text=MarkdownTextObject(text=f"{label_b}\n{shown(card.answer_b)}")),
    ]
    value = str(card.pair_id)
    if not card.closed:
        blocks.append(
            ActionsBlock(
                block_id=f"ab_pair_{card.pair_id}",
                elements=[
                    _button("A is better", ids.AB_VOTE_A, value),
                    _button("B is better", ids.AB_VOTE_B, value),
                    _button("Tie", ids.AB_VOTE_TIE, value),
                    _button("Both bad", ids.AB_VOTE_BOTH_BAD, value),
                    _button("why?", ids.AB_WHY, value),
                ],
            )
        )
        n = card.votes
        line = f"{n} vote{'s' if n != 1 else ''} so far"
        if card.deadline is not None:
            line += f" · voting closes {slack_date(card.deadline)}"
        blocks.append(context(line))
    else:
        c = card.counts
        blocks.append(
            context(
                f"Closed · {card.votes} votes: A is better {c.get('A', 0)} · "
                f"B is better {c.get('B', 0)}"
                f" · tie {c.get('tie', 0)} · both bad {c.get('both_bad', 0)}"
            )
        )
    return blocks


# -- the "why?" modal -----------------------------------------------------------------------------


def why_modal(pair_id: int, position: int, comment: str = "") -> View:
    """A short comment attached to the voter's vote on one pair."""
    return View(
        type="modal",
        callback_id=ids.AB_WHY_MODAL,
        private_metadata=str(pair_id),
        title=PlainTextObject(text="Why this vote?"),
        submit=PlainTextObject(text="Save"),
        close=PlainTextObject(text="Cancel"),
        blocks=[
            SectionBlock(
                text=MarkdownTextObject(
                    text=f"Pair {position + 1}: what made one answer better (or both bad)? "
                    "Your comment goes with your vote and is exported with it, without your name."
                )
            ),
            InputBlock(
                block_id=ids.AB_WHY_BLOCK,
                label=PlainTextObject(text="Comment"),
                element=PlainTextInputElement(
                    action_id=ids.AB_WHY_INPUT,
                    multiline=True,
                    max_length=COMMENT_LIMIT,
                    initial_value=comment[:COMMENT_LIMIT] or None,
                ),
            ),
        ],
    )


# -- the result -----------------------------------------------------------------------------------


def result_text(round_id: int, result: dict[str, Any]) -> str:
    return (
        f"A/B round #{round_id} closed: {result['candidate']} won "
        f"{percent(result.get('win_rate'))} of {result['votes']} votes."
    )


def _verdict(result: dict[str, Any], opponent: str) -> str:
    ci = result.get("ci") or {}
    if result.get("decided"):
        better = (ci.get("low") or 0) > 0.5
        who = f"*{result['candidate']}* is {'better' if better else 'worse'} than *{opponent}*"
        return f"Decided: {who} (the interval excludes 50%)."
    if not result.get("votes"):
        return "Not decided: nobody voted."
    return "Not decided: the interval includes 50%, or there were too few votes or pairs to tell."


def result_blocks(
    round_id: int,
    opponent: str,
    result: dict[str, Any],
    leaderboard: list[dict[str, Any]],
    *,
    reason: str = "deadline",
) -> list[Block]:
    """The result of a round (``RoundResult.to_dict()``) and the leaderboard
    (``LeaderboardRow.to_dict()`` rows, best first)."""
    ci = result.get("ci") or {}
    bias = result.get("position_bias") or {}
    why = {"deadline": "at its deadline", "decided": "early: the result is clear"}.get(
        reason, reason
    )
    lines = [
        f"*{escape(result['candidate'])}* against *{escape(opponent)}*, closed {why}.",
        f"*Votes:* {result['votes']} on {result['pairs']} pairs — {result['wins']} won, "
        f"{result['losses']} lost, {result['ties']} ties, {result['both_bad']} both bad",
        f"*Win rate of {escape(result['candidate'])}* (ties count half): "
        f"*{percent(result.get('win_rate'))}*, "
        f"95% CI {percent(ci.get('low'))}–{percent(ci.get('high'))} (bootstrap over pairs)",
        _verdict(result, escape(opponent)),
    ]
    if bias.get("decisive"):
        lines.append(
            f"*Position bias:* the answer shown first (A) won {bias['left_wins']} of "
            f"{bias['decisive']} decisive votes ({percent(bias.get('share'))})"
        )
    else:
        lines.append("*Position bias:* no decisive votes to measure it")
    blocks: list[Block] = [
        HeaderBlock(text=f"A/B round #{round_id}: result"),
        SectionBlock(text=MarkdownTextObject(text="\n".join(lines))),
    ]
    if leaderboard:
        rows = [
            f"{r['rank']}. *{escape(r['model'])}* {r['rating']:.0f} "
            f"({_num(r.get('low'))}–{_num(r.get('high'))}) · {r['votes']} votes: "
            f"{r['wins']} won, {r['losses']} lost, {r['ties']} tied"
            for r in leaderboard[:20]
        ]
        blocks.append(DividerBlock())
        blocks.append(
            SectionBlock(
                text=MarkdownTextObject(
                    text="*Leaderboard* (Bradley–Terry, base = 1000)\n" + "\n".join(rows)
                )
            )
        )
        blocks.append(
            ContextBlock(
                elements=[
                    MarkdownTextObject(
                        text="Ratings from every A/B vote so far; 95% intervals by bootstrap. "
                        "Models whose intervals overlap share a rank."
                    )
                ]
            )
        )
    return blocks


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"
