"""``threadtune forget --message CHANNEL/TS`` and ``threadtune forget --user U…``: remove a piece of
curated content, or everything of one person, from every copy threadtune keeps
(``engine.forget``), and print what was removed where."""

from __future__ import annotations

import argparse
import json
import re

from bot.cli.common import USAGE, CommandError, open_db
from bot.settings import Settings

MESSAGE = re.compile(r"^(?P<channel>[CDG][A-Z0-9]+)/(?P<ts>\d+\.\d+)$")
USER = re.compile(r"^[UW][A-Z0-9]+$")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "forget",
        help="remove a message's content, or a person's, from every copy threadtune keeps",
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--message", metavar="CHANNEL/TS",
        help="a Slack message: the example whose answer it is, or every example of its thread",
    )
    which.add_argument(
        "--user", metavar="USER_ID",
        help="a person: the examples they answered, their questions, their id in audit rows "
        "(their A/B votes are kept, anonymous)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.set_defaults(func=run_forget)


def run_forget(args: argparse.Namespace, settings: Settings) -> int:
    from engine.forget import forget

    if args.message:
        found = MESSAGE.match(args.message)
        if found is None:
            raise CommandError(
                f"--message wants CHANNEL/TS such as C0123ABCD/1733400000.000100, not "
                f"{args.message!r}.",
                USAGE,
            )
        message = (found["channel"], found["ts"])
        what, user = f"message {args.message}", None
    else:
        if USER.match(args.user) is None:
            raise CommandError(f"--user wants a Slack user ID such as U0123ABCD, not "
                               f"{args.user!r}.", USAGE)
        message, what, user = None, f"everything of {args.user}", args.user
    db = open_db(settings)
    try:
        report = forget(db, settings.home, what=what, message=message, user=user)
    finally:
        db.dispose()
    if args.json:
        print(json.dumps({
            "what": report.what, "examples": report.examples, "rows": report.rows,
            "anonymised": report.anonymised,
            "snapshots": {str(k): v for k, v in report.snapshots.items()},
            "run_lines": {str(k): v for k, v in report.run_lines.items()},
            "checkpoints": report.checkpoints, "running_jobs": report.running_jobs,
            "models": report.models, "files": report.files,
            "deleted_files": report.deleted_files, "database": report.database,
        }))
    else:
        print("\n".join(report.lines()))
    return 0
