from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from slack_sdk.models.blocks import SectionBlock

from bot.blocks.common import sections


class HelpRow(Protocol):
    """One line of ``/tune help``; ``bot.commands.tune.Subcommand`` is one."""

    @property
    def name(self) -> str: ...

    @property
    def usage(self) -> str: ...

    @property
    def help(self) -> str: ...

    @property
    def admin_only(self) -> bool: ...


def help_line(row: HelpRow) -> str:
    usage = f" {row.usage}" if row.usage else ""
    admins = " _(admins)_" if row.admin_only else ""
    return f"`/tune {row.name}{usage}` — {row.help}{admins}"


def help_blocks(
    curate_emoji: str, reject_emoji: str, rows: Sequence[HelpRow]
) -> list[SectionBlock]:
    lines = [
        "*threadtune* turns your team's best Slack answers into its own model.",
        f"Curators mark a good answer in a thread with :{curate_emoji}:; "
        f":{reject_emoji}: excludes a thread.",
        "",
        *(help_line(row) for row in rows),
    ]
    return sections("\n".join(lines))
