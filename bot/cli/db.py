"""``threadtune db upgrade``."""

from __future__ import annotations

import argparse

from bot.cli.common import open_db
from bot.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    up = db_sub.add_parser("upgrade", help="apply Alembic migrations up to the latest")
    up.set_defaults(func=run_upgrade)


def run_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    open_db(settings).dispose()
    print("Database schema is up to date.")
    return 0
