"""``threadtune dataset stats`` and ``threadtune dataset export`` (the current curated examples)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bot.blocks.dataset import readiness_line
from bot.cli.common import open_db
from bot.settings import Settings
from storage.curation import active_examples, curation_stats
from storage.db import session_scope

TARGET = 500


def add_curated_subcommands(dataset_sub: argparse._SubParsersAction) -> None:
    stats = dataset_sub.add_parser(
        "stats", help="curated examples by channel and curator, readiness"
    )
    stats.add_argument("--json", action="store_true", help="print the figures as JSON")
    stats.set_defaults(func=run_stats)


def add_export_arguments(export: argparse.ArgumentParser) -> None:
    export.add_argument(
        "--output", "-o", type=Path, help="file to write (default: standard output)"
    )


def run_stats(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console
    from rich.table import Table

    with session_scope(open_db(settings)) as session:
        stats = curation_stats(session=session)
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    console = Console()
    console.print(
        f"[bold]{stats['examples']}[/bold] curated examples (target {TARGET}); "
        f"{stats['withdrawn']} withdrawn, {stats['excluded_threads']} threads excluded"
    )
    console.print(readiness_line(stats["examples"], target=TARGET))
    for title, key in (("Channel", "by_channel"), ("Curator", "by_curator")):
        if stats[key]:
            table = Table(title=f"By {title.lower()}")
            table.add_column(title)
            table.add_column("Examples", justify="right")
            for name, count in stats[key].items():
                table.add_row(name, str(count))
            console.print(table)
    return 0


def export_current(settings: Settings, output: Path | None) -> int:
    """Write the current curated examples as chat JSONL with their Slack origin."""
    with session_scope(open_db(settings)) as session:
        rows = active_examples(session=session)
    lines = [
        json.dumps(
            {
                "messages": example.messages,
                "metadata": {
                    "channel": example.channel,
                    "thread_ts": example.thread_ts,
                    "message_ts": example.message_ts,
                    "curators": curators,
                },
            },
            ensure_ascii=False,
        )
        for example, curators in rows
    ]
    text = "".join(line + "\n" for line in lines)
    if output is None:
        sys.stdout.write(text)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = output.with_suffix(output.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(output)
        print(f"Wrote {len(lines)} examples to {output}", file=sys.stderr)
    return 0
