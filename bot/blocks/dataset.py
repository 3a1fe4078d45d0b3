from __future__ import annotations

from typing import Any

from slack_sdk.models.blocks import Block, DividerBlock, HeaderBlock

from bot.blocks.common import context, sections

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


def snapshot_lines(snapshot_id: int, manifest: dict[str, Any], *, limit: int = 8) -> list[str]:
    """The latest snapshot in a few lines: splits, duplicates, errors first, then warnings."""
    counts = manifest.get("counts", {})
    lines = [
        f"*Snapshot #{snapshot_id}:* {counts.get('train', 0)} train / "
        f"{counts.get('validation', 0)} validation / "
        f"{counts.get('test', 0)} test · {counts.get('duplicates', 0)} duplicates collapsed · "
        f"{counts.get('errors', 0)} errors · {counts.get('warnings', 0)} warnings"
    ]
    findings = sorted(manifest.get("findings", []), key=lambda f: f.get("level") != "error")
    seen_rules: dict[str, int] = {}
    shown = 0
    for f in findings:
        rule = f.get("rule", "")
        seen_rules[rule] = seen_rules.get(rule, 0) + 1
        if seen_rules[rule] > 2 or shown >= limit:
            continue
        icon = "⛔" if f.get("level") == "error" else "⚠️"
        lines.append(f"{icon} {f.get('where', '')}: {f.get('message', '')}")
        shown += 1
    hidden = len(findings) - shown
    if hidden > 0:
        lines.append(f"…and {hidden} more findings (`threadtune dataset validate --all`).")
    return lines
