"""``threadtune emulator``: run the local Slack emulator on its own."""

from __future__ import annotations

import argparse
import logging

from bot.emulator.__main__ import main
from bot.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    emu = sub.add_parser(
        "emulator",
        help="run the local Slack emulator (a Web-API-compatible server)",
        add_help=False,
    )
    emu.add_argument("rest", nargs=argparse.REMAINDER, help="options of python -m bot.emulator")
    emu.set_defaults(func=run, log_level=logging.INFO)  # a service: its log is its output


def run(args: argparse.Namespace, settings: Settings) -> int:
    return int(main(args.rest) or 0)
