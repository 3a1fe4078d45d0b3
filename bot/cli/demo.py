"""``threadtune demo``: the whole loop locally, no Slack account needed."""

from __future__ import annotations

import argparse
from pathlib import Path

from bot.demo.runner import Demo
from bot.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="run the loop locally against the Slack emulator")
    demo.add_argument(
        "--quick", action="store_true", help="a shorter run (fewer threads, fewer steps)"
    )
    demo.add_argument(
        "--out", type=Path, default=Path("demo-out"), help="where to write the outputs"
    )
    demo.add_argument(
        "--socket-mode",
        action="store_true",
        help="the bot connects in Socket Mode (the emulator's WebSocket) instead of HTTP",
    )
    demo.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    return Demo(settings, args.out, quick=args.quick, socket_mode=args.socket_mode).run()
