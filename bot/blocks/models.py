"""Block Kit for ``/tune models``: the registry, newest first, the deployed model marked."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from slack_sdk.models.blocks import Block, HeaderBlock, PlainTextObject

from bot.blocks.common import context, sections

FORGOTTEN = "trained on content since deleted"
FORGOTTEN_HELP = (
    "A model marked _trained on content since deleted_ learned from threads that were deleted or "
    "forgotten since; it can't be un-trained — `/tune train` a new one and deploy it to drop them."
)
STATUS = {"deployed": ":large_green_circle: deployed", "candidate": ":white_circle: candidate",
          "retired": ":black_circle: retired"}


@dataclass(frozen=True)
class ModelRow:
    """What the list shows of one registry model."""

    name: str
    status: str
    job_id: int | None
    rank: int
    eval_verdict: str
    ab_win_rate: float | None
    created_at: datetime
    encrypted: bool
    content_forgotten: bool = False  # trained on content since deleted (engine.forget)

    @classmethod
    def of(cls, model: Any) -> ModelRow:
        win = (model.ab_result or {}).get("win_rate")
        return cls(
            model.name,
            model.status,
            model.job_id,
            model.rank,
            model.eval_verdict or "",
            float(win) if isinstance(win, int | float) else None,
            model.created_at,
            bool(model.encrypted),
            getattr(model, "content_forgotten_at", None) is not None,
        )


def model_line(row: ModelRow) -> str:
    parts = [f"*{row.name}*", STATUS.get(row.status, row.status)]
    if row.job_id is not None:
        parts.append(f"job #{row.job_id}")
    parts.append(f"LoRA r={row.rank}" if row.rank else "LoRA")
    if row.eval_verdict:
        parts.append(f"eval: {row.eval_verdict}")
    if row.ab_win_rate is not None:
        parts.append(f"A/B win rate {100 * row.ab_win_rate:.0f}%")
    parts.append(f"{row.created_at:%Y-%m-%d}")
    if row.encrypted:
        parts.append(":lock:")
    if row.content_forgotten:
        parts.append(f":warning: {FORGOTTEN}")
    return " · ".join(parts)


def models_text(rows: list[ModelRow]) -> str:
    deployed = next((r.name for r in rows if r.status == "deployed"), None)
    return f"{len(rows)} models; /ask uses {deployed or 'the base model'}."


def models_blocks(rows: list[ModelRow]) -> list[Block]:
    deployed = next((r for r in rows if r.status == "deployed"), None)
    head = (
        f"/ask answers with *{deployed.name}*."
        if deployed
        else "/ask answers with the base model: nothing is deployed."
    )
    if not rows:
        return [*sections(head + "\nNo trained models yet: `/tune train` makes one.")]
    notes = [
        "`/tune deploy <model>` serves one behind /ask after a probe; `/tune rollback` goes back."
    ]
    if any(r.content_forgotten for r in rows):
        notes.append(FORGOTTEN_HELP)
    return [
        HeaderBlock(text=PlainTextObject(text="Models")),
        *sections(head + "\n\n" + "\n".join(model_line(r) for r in rows)),
        context(" ".join(notes)),
    ]
