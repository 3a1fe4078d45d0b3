"""The ``threadtune`` command line. Each area registers its subcommands from its own module:
``register(subparsers)`` adds parsers whose ``func(args, settings) -> int`` runs the command."""

from __future__ import annotations

import argparse
import logging
import sys

from bot.settings import ConfigError, load_settings

from . import db as db_cmd
from . import serve as serve_cmd

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
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for area in AREAS + _optional_areas():
        area.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = load_settings()
        return int(args.func(args, settings) or 0)
    except ConfigError as exc:
        print(f"threadtune: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
