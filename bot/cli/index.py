"""``threadtune index rebuild`` and ``threadtune index stats``: the index of curated examples that
grounds answers (``engine.retrieval``). The bot keeps it in step with curation by itself; rebuild is
for repair — it forgets every stored vector and embeds every current example again."""

from __future__ import annotations

import argparse
import json
import sys

from bot.cli.common import CommandError, open_db
from bot.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    index = sub.add_parser("index", help="the index of curated examples that grounds answers")
    index_sub = index.add_subparsers(dest="index_command", required=True)
    rebuild = index_sub.add_parser("rebuild", help="embed every current curated example again")
    rebuild.set_defaults(func=run_rebuild)
    stats = index_sub.add_parser("stats", help="examples indexed, model, dimension, last sync")
    stats.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    stats.set_defaults(func=run_stats)


def _open_db(settings: Settings):  # noqa: ANN202
    """The database for a read-only look: a SQLite file that isn't there is a sentence."""
    return open_db(settings, must_exist=True)


_NoDatabase = CommandError  # what bot.cli.ask catches from _open_db


def run_rebuild(args: argparse.Namespace, settings: Settings) -> int:
    from engine.retrieval import Index
    from storage.db import session_scope

    engine = _open_db(settings)
    index = Index()
    try:
        with session_scope(engine) as session:
            report = index.rebuild(session=session)
    except ImportError as exc:
        print(
            f"threadtune: the embedding model is not installed ({exc.name}): "
            "install threadtune with its ml extra.",
            file=sys.stderr,
        )
        return 1
    finally:
        engine.dispose()
    skipped = f"; {report.skipped} skipped (no question or no answer)" if report.skipped else ""
    print(
        f"Indexed {report.examples} curated examples with {index.embedder.name} "
        f"in {report.seconds:.1f} s{skipped}."
    )
    return 0


def run_stats(args: argparse.Namespace, settings: Settings) -> int:
    from engine.retrieval import stored_stats
    from storage.db import session_scope

    engine = _open_db(settings)
    try:
        with session_scope(engine) as session:
            stats = stored_stats(session=session)
    finally:
        engine.dispose()
    last = stats.last_sync.isoformat(timespec="seconds") if stats.last_sync else None
    if args.json:
        print(
            json.dumps(
                {
                    "examples": stats.examples,
                    "model": stats.model,
                    "dimension": stats.dimension,
                    "last_sync": last,
                    "pending": stats.pending,
                }
            )
        )
        return 0
    print(f"Examples indexed: {stats.examples}")
    print(f"Model:            {stats.model} ({stats.dimension} dimensions)")
    print(f"Last sync:        {last or 'never'}")
    if stats.pending:
        print(
            f"Not indexed yet:  {stats.pending} current examples (the bot indexes them within "
            "seconds; `threadtune index rebuild` does it now)"
        )
    return 0
