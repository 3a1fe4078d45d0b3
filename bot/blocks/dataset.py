from __future__ import annotations

from typing import Any

from slack_sdk.models.blocks import Block, DividerBlock, HeaderBlock

from bot.blocks.common import context, sections
from engine.dataset.findings import ERROR, WARNING, Finding, FindingGroup, group_findings

TARGET = 500


def readiness_line(count: int, *, minimum: int = 10, target: int = TARGET) -> str:
    if count < minimum:
        return f"Not ready to train: {count} of the {minimum} examples needed."
    if count < target:
        return (
            f"Ready to train ({count} examples); "
            f"{target}+ is the target for a meaningful improvement."
        )
    return f"Ready to train: {count} examples, at or above the {target}-example target."


def dataset_blocks(
    stats: dict[str, Any], *, target: int = TARGET, extra: list[str] | None = None
) -> list[Block]:
    """The ``/tune dataset`` answer: size against the target, by channel and curator."""
    count = stats["examples"]
    filled = min(10, round(10 * count / target)) if target else 10
    bar = "█" * filled + "░" * (10 - filled)
    lines = [
        f"*{count}* curated examples  `{bar}`  {count}/{target}",
        readiness_line(count, target=target),
    ]
    if stats["by_channel"]:
        lines.append(
            "*By channel:* " + ", ".join(f"<#{c}> {n}" for c, n in stats["by_channel"].items())
        )
    if stats["by_curator"]:
        lines.append(
            "*By curator:* " + ", ".join(f"<@{u}> {n}" for u, n in stats["by_curator"].items())
        )
    lines.extend(extra or [])
    blocks: list[Block] = [HeaderBlock(text="Dataset"), *sections("\n".join(lines)), DividerBlock()]
    blocks.append(
        context(f"{stats['withdrawn']} withdrawn · {stats['excluded_threads']} threads excluded")
    )
    return blocks


SHOWN_GROUPS = 5


def snapshot_lines(
    snapshot_id: int, manifest: dict[str, Any], *, limit: int = SHOWN_GROUPS
) -> list[str]:
    """The latest snapshot in a few lines: splits, then the ``limit`` most useful findings, each
    kind once with its count (errors first, then the whole dataset's, then the commonest), and
    how many more there are. Every finding stays in the manifest and in ``dataset validate``."""
    counts = manifest.get("counts", {})
    groups = group_findings([Finding.from_dict(f) for f in manifest.get("findings", [])])
    lines = [
        f"*Snapshot #{snapshot_id}:* {counts.get('train', 0)} train / "
        f"{counts.get('validation', 0)} validation / "
        f"{counts.get('test', 0)} test · {counts.get('duplicates', 0)} duplicates collapsed · "
        f"{_tally(groups, ERROR, 'error')} · {_tally(groups, WARNING, 'warning')}"
    ]
    for group in groups[:limit]:
        icon = "⛔" if group.level == ERROR else "⚠️"
        lines.append(f"{icon} {group.sentence()}")
    hidden = len(groups) - limit
    if hidden > 0:
        lines.append(
            f"+{hidden} more kind{'s' if hidden != 1 else ''} of finding "
            "(`threadtune dataset validate --all` lists every one)."
        )
    return lines


def _tally(groups: list[FindingGroup], level: str, word: str) -> str:
    """``90 warnings of 3 kinds``: how many, and how many lines they take below."""
    mine = [g for g in groups if g.level == level]
    n = sum(g.count for g in mine)
    return f"{n} {word}{'' if n == 1 else 's'}" + (
        f" of {len(mine)} kinds" if len(mine) > 1 else ""
    )
