"""Block Kit for ``/tune models``: the registry, newest first, the deployed model marked."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ConfirmObject,
    HeaderBlock,
    InputBlock,
    MarkdownTextObject,
    PlainTextInputElement,
    PlainTextObject,
    SectionBlock,
)
from slack_sdk.models.views import View

from bot import ids
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
    override: str = ""  # how its latest deploy overrode the evaluation gate ("" when it did not)
    content_forgotten: bool = False  # trained on content since deleted (engine.forget)

    @classmethod
    def of(cls, model: Any, override: Any = None) -> ModelRow:
        """``override``: the model's latest Deployment row that overrode the evaluation gate."""
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
            override_text(override) if override is not None else "",
            getattr(model, "content_forgotten_at", None) is not None,
        )


def override_text(deployment: Any) -> str:
    """"deployed over its *reject* verdict by <@U1> on 2026-12-06: “reason”"."""
    verdict = deployment.override_verdict
    what = "without an evaluation" if verdict == "unevaluated" else f"over its *{verdict}* verdict"
    who = f" by <@{deployment.by_user}>" if deployment.by_user.startswith("U") else (
        f" by {deployment.by_user}" if deployment.by_user else ""
    )
    return (
        f":warning: deployed {what}{who} on {deployment.created_at:%Y-%m-%d}: "
        f"“{deployment.override_reason}”"
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
    line = " · ".join(parts)
    return line + (f"\n      {row.override}" if row.override else "")


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


# -- deploying past the evaluation gate -----------------------------------------------------------

OVERRIDE_REASON_LIMIT = 500


def override_how(name: str) -> str:
    return (
        f'To deploy it anyway, say why: `/tune deploy {name} force reason="…"` '
        "(or the button below); the override and its reason are recorded."
    )


def deploy_refused_blocks(message: str, name: str) -> list[Block]:
    """A deploy the evaluation gate refused: why, how to override, and *Deploy anyway…* — a
    confirm dialog first, then a modal that asks for the reason."""
    return [
        *sections(f"{message}\n{override_how(name)}"),
        ActionsBlock(
            elements=[
                ButtonElement(
                    text="Deploy anyway…",
                    action_id=ids.DEPLOY_OVERRIDE,
                    value=name,
                    style="danger",
                    confirm=ConfirmObject(
                        title="Override the evaluation?",
                        text=f"{name} did not pass its evaluation. Deploying it puts it behind "
                        "/ask for everyone; you will be asked for a reason, which is recorded.",
                        confirm="Give a reason",
                        deny="Cancel",
                        style="danger",
                    ),
                )
            ]
        ),
    ]


def override_modal(name: str, problem: str, channel: str) -> View:
    """The reason for deploying ``name`` past the evaluation gate (required)."""
    return View(
        type="modal",
        callback_id=ids.DEPLOY_OVERRIDE_MODAL,
        private_metadata=json.dumps({"model": name, "channel": channel}),
        title=PlainTextObject(text="Deploy anyway?"),
        submit=PlainTextObject(text="Deploy"),
        close=PlainTextObject(text="Cancel"),
        blocks=[
            SectionBlock(
                text=MarkdownTextObject(
                    text=f"*{name}*: {problem}. It still goes through the deploy probe. The "
                    "override, your name and this reason are kept in the deployment history and "
                    "shown on the Home tab and in `/tune models`."
                )
            ),
            InputBlock(
                block_id=ids.DEPLOY_OVERRIDE_BLOCK,
                label=PlainTextObject(text="Why deploy it anyway?"),
                element=PlainTextInputElement(
                    action_id=ids.DEPLOY_OVERRIDE_INPUT,
                    multiline=True,
                    min_length=3,
                    max_length=OVERRIDE_REASON_LIMIT,
                ),
            ),
        ],
    )
