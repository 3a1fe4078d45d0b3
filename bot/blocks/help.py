from __future__ import annotations

from slack_sdk.models.blocks import Block

from bot.blocks.common import sections

#: subcommand → (arguments, what it does, admins only)
TUNE_HELP: dict[str, tuple[str, str, bool]] = {
    "status": ("", "what threadtune is doing now", False),
    "dataset": ("[build]", "curated examples and readiness; `build` makes a snapshot", False),
    "train": ("[key=value …]", "queue a fine-tuning job on the latest snapshot", True),
    "jobs": ("", "recent training jobs", False),
    "cancel": ("<job>", "cancel a queued or running job", True),
    "eval": ("<job>", "evaluate a job's model against the base model", True),
    "ab": ("<job> [pairs]", "start a blind A/B round in this channel", True),
    "models": ("", "trained models and which one is deployed", False),
    "deploy": ("<model>", "serve a model behind /ask", True),
    "rollback": ("", "go back to the previously deployed model", True),
    "help": ("", "this list", False),
}


def help_blocks(curate_emoji: str, reject_emoji: str) -> list[Block]:
    lines = ["*threadtune* turns your team's best Slack answers into its own model.",
             f"Curators mark a good answer in a thread with :{curate_emoji}:; :{reject_emoji}: excludes a thread.", ""]
    for name, (args, what, admin) in TUNE_HELP.items():
        lines.append(f"`/tune {name}{' ' + args if args else ''}` — {what}{' _(admins)_' if admin else ''}")
    return sections("\n".join(lines))
