"""The one message per training job that the bot keeps up to date."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from slack_sdk.models.blocks import Block, HeaderBlock

from bot.blocks.common import context, sections
from bot.blocks.home import STATE_ICONS


@dataclass
class JobProgress:
    job_id: int
    state: str
    method: str = "qlora"
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    eval_loss: float | None = None
    eta_s: float | None = None
    error: str = ""
    snapshot_id: int | None = None
    requested_by: str = ""
    resumed_from: int | None = None
    # what the run chose on its own: setting → {"value", "reason"} (run_info.json's "choices")
    choices: dict[str, dict[str, Any]] = field(default_factory=dict)


def format_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return "estimating…"
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def progress_bar(step: int, total: int, width: int = 20) -> str:
    if total <= 0:
        return "░" * width
    filled = min(width, round(width * step / total))
    return "█" * filled + "░" * (width - filled)


def job_text(p: JobProgress) -> str:
    """The plain-text fallback (notifications, screen readers)."""
    return f"Training job {p.job_id}: {p.state}" + (
        f", step {p.step}/{p.total_steps}" if p.total_steps else ""
    )


CHOICE_LABELS = {
    "compute_dtype": "compute",
    "gradient_checkpointing": "gradient checkpointing",
    "max_length": "sequence length",
    "batch_size": "batch",
    "eval_steps": "evaluation",
    "learning_rate": "learning rate",
    "epochs": "epochs",
}


def choices_text(choices: dict[str, dict[str, Any]]) -> str:
    """What the run chose for itself, one line each: the value and why."""
    lines = ["*Chosen for this run:*"]
    for name, choice in choices.items():
        value = choice.get("value")
        shown = "on" if value is True else "off" if value is False else value
        label = CHOICE_LABELS.get(name, name.replace("_", " "))
        lines.append(f"• {label} `{shown}` — {choice.get('reason', '')}")
    return "\n".join(lines)


def job_blocks(p: JobProgress) -> list[Block]:
    icon = STATE_ICONS.get(p.state, "•")
    lines = [
        f"{icon} *{p.state}*"
        + (f" — `{p.method}` on snapshot #{p.snapshot_id}" if p.snapshot_id else f" — `{p.method}`")
    ]
    if p.total_steps:
        pct = 100 * p.step / p.total_steps
        lines.append(
            f"`{progress_bar(p.step, p.total_steps)}` step {p.step}/{p.total_steps} ({pct:.0f}%)"
        )
    metrics = []
    if p.loss is not None:
        metrics.append(f"loss {p.loss:.4f}")
    if p.eval_loss is not None:
        metrics.append(f"validation loss {p.eval_loss:.4f}")
    if p.state == "running":
        metrics.append(f"ETA {format_duration(p.eta_s)}")
    if metrics:
        lines.append(" · ".join(metrics))
    if p.resumed_from:
        lines.append(
            f"Resumed from the checkpoint at step {p.resumed_from} "
            "after the previous worker stopped."
        )
    if p.error:
        lines.append(f"*Why it stopped:* {p.error}")
    if p.choices:
        lines.append(choices_text(p.choices))
    blocks: list[Block] = [
        HeaderBlock(text=f"Training job {p.job_id}"),
        *sections("\n".join(lines)),
    ]
    who = f"requested by <@{p.requested_by}> · " if p.requested_by else ""
    blocks.append(context(f"{who}`/tune jobs` for all jobs · `/tune cancel {p.job_id}` to stop it"))
    return blocks
