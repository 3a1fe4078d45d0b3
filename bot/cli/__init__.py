"""The ``threadtune`` command line. Each area registers its subcommands from its own module:
``register(subparsers)`` adds parsers whose ``func(args, settings) -> int`` runs the command."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

from bot.settings import load_settings

from . import db as db_cmd
from . import serve as serve_cmd
from .common import ensure_home, explain

AREAS = [db_cmd, serve_cmd]


def _optional_areas() -> list:
    """Areas whose modules may pull heavy imports lazily; listed here so each is wired once."""
    import importlib

    names = [
        "dataset",
        "model",
        "jobs",
        "evaluate",
        "ab",
        "deploy",
        "vllm",
        "demo",
        "emulator",
        "audit",
        "index",
        "ask",
        "backfill",
        "forget",
    ]
    found = []
    for name in names:
        try:
            found.append(importlib.import_module(f"bot.cli.{name}"))
        except ModuleNotFoundError as exc:  # an area not built yet
            if exc.name != f"bot.cli.{name}":
                raise
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="threadtune", description=__doc__.splitlines()[0])
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log at INFO (-vv: DEBUG) and print the traceback behind an error",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for area in AREAS + _optional_areas():
        area.register(sub)
    return parser


def log_level(verbose: int, default: int = logging.WARNING) -> int:
    """WARNING unless the command is a long-running service (its parser sets ``log_level``);
    ``-v`` INFO, ``-vv`` DEBUG."""
    if verbose >= 2:
        return logging.DEBUG
    if verbose == 1:
        return min(default, logging.INFO)
    return default


def main(argv: list[str] | None = None) -> int:
    """Run one command. The project's known errors (settings, database, base model, dataset,
    training settings) become one sentence on stderr and a non-zero status: 2 for a request
    that is wrong, 1 for one that could not be done; ``-v`` prints the traceback too."""
    args = build_parser().parse_args(argv)
    level = log_level(args.verbose, getattr(args, "log_level", logging.WARNING))
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)  # also when an imported library configured logging
    db_url = None
    try:
        settings = load_settings()
        db_url = settings.db_url
        ensure_home(settings)
        return int(args.func(args, settings) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        known = explain(exc, db_url)
        if known is None:
            raise
        sentence, code = known
        if args.verbose:
            traceback.print_exc()
        print(f"threadtune: {sentence}", file=sys.stderr)
        return code
