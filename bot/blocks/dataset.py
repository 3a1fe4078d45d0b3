from __future__ import annotations

from typing import Any

from slack_sdk.models.blocks import Block, DividerBlock, HeaderBlock

from bot.blocks.common import context, sections

TARGET = 500


def readiness_line(count: int, *, minimum: int = 10, target: int = TARGET) -> str:
    if count < minimum:
        return f"Not ready to train: {count} of the {minimum} examples needed."
    if count < target:
        return f"Ready to train ({count} examples); {target}+ is the target for a meaningful improvement."
    return f"Ready to train: {count} examples, at or above the {target}-example target."


def dataset_blocks(stats: dict[str, Any], *, target: int = TARGET, extra: list[str] | None = None) -> list[Block]:
    """The ``/tune dataset`` answer: size against the target, by channel and curator."""
    count = stats["examples"]
    filled = min(10, round(10 * count / target)) if target else 10
    bar = "█" * filled + "░" * (10 - filled)
    lines = [f"*{count}* curated examples  `{bar}`  {count}/{target}", readiness_line(count, target=target)]
    if stats["by_channel"]:
        lines.append("*By channel:* " + ", ".join(f"<#{c}> {n}" for c, n in stats["by_channel"].items()))
    if stats["by_curator"]:
        lines.append("*By curator:* " + ", ".join(f"<@{u}> {n}" for u, n in stats["by_curator"].items()))
    lines.extend(extra or [])
    blocks: list[Block] = [HeaderBlock(text="Dataset"), *sections("\n".join(lines)), DividerBlock()]
    blocks.append(context(f"{stats['withdrawn']} withdrawn · {stats['excluded_threads']} threads excluded"))
    return blocks
