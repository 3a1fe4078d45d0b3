"""``threadtune audit export``: the /ask audit log — who asked what, where, when, which model
answered, how fast, whether the cache answered, errors, and 👍/👎 counts — as JSONL or CSV.

Questions and answers are stored redacted (``engine.redact``), so the export carries no e-mail
addresses, phone numbers, tokens or card numbers. Whoever can run this command can read the
database, which makes them an admin of this deployment; the file is created readable by its
owner only.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import IO

from bot.cli.common import open_db
from bot.settings import Settings
from storage.db import session_scope
from storage.registry import audit_rows

FIELDS = [
    "id",
    "time",
    "user",
    "channel",
    "question",
    "answer",
    "model",
    "latency_ms",
    "cached",
    "error",
    "message_ts",
    "thumbs_up",
    "thumbs_down",
]


def register(sub: argparse._SubParsersAction) -> None:
    audit = sub.add_parser("audit", help="the /ask audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    export = audit_sub.add_parser("export", help="write the /ask audit log as JSONL or CSV")
    export.add_argument(
        "--format", choices=("jsonl", "csv"), default="jsonl", help="file format (default jsonl)"
    )
    export.add_argument(
        "--since", type=day, default=None, help="first day to include, YYYY-MM-DD (UTC)"
    )
    export.add_argument(
        "--until", type=day, default=None, help="last day to include, YYYY-MM-DD (UTC)"
    )
    export.add_argument(
        "--output",
        default=None,
        help="file to write, or - for standard output "
        "(default THREADTUNE_HOME/exports/audit/ask-<time>.<format>)",
    )
    export.set_defaults(func=run_export)


def day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day written YYYY-MM-DD") from None


def record(row, up: int, down: int) -> dict:  # noqa: ANN001 - an AskLog row
    return {
        "id": row.id,
        "time": row.created_at.astimezone(UTC).isoformat(timespec="seconds"),
        "user": row.user,
        "channel": row.channel,
        "question": row.question,
        "answer": row.answer,
        "model": row.model_name,
        "latency_ms": row.latency_ms,
        "cached": bool(row.cached),
        "error": row.error,
        "message_ts": row.message_ts,
        "thumbs_up": up,
        "thumbs_down": down,
    }


def write(rows, out: IO[str], fmt: str) -> int:  # noqa: ANN001 - (row, up, down) triples
    writer = csv.DictWriter(out, fieldnames=FIELDS) if fmt == "csv" else None
    if writer is not None:
        writer.writeheader()
    n = 0
    for row, up, down in rows:
        item = record(row, up, down)
        if writer is not None:
            writer.writerow(item)
        else:
            out.write(json.dumps(item, ensure_ascii=False) + "\n")
        n += 1
    return n


def run_export(args: argparse.Namespace, settings: Settings) -> int:
    since = datetime.combine(args.since, time.min, UTC) if args.since else None
    # --until names the last day included: the query's bound is the next midnight
    until = datetime.combine(args.until + timedelta(days=1), time.min, UTC) if args.until else None
    if since and until and since >= until:
        print("threadtune: --since must be on or before --until.", file=sys.stderr)
        return 2
    if args.output == "-":
        target, out = None, sys.stdout
    else:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        target = (
            Path(args.output)
            if args.output
            else settings.home / "exports" / "audit" / f"ask-{stamp}.{args.format}"
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        out = os.fdopen(
            os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
            "w",
            newline="",
            encoding="utf-8",
        )
    engine = open_db(settings)
    try:
        with session_scope(engine) as session:
            n = write(audit_rows(session=session, since=since, until=until), out, args.format)
    finally:
        engine.dispose()
        if target is not None:
            out.close()
    span = f" from {args.since or 'the start'} through {args.until or 'today'}"
    where = "standard output" if target is None else str(target)
    print(f"Wrote {n} /ask question{'s' if n != 1 else ''}{span} to {where}.", file=sys.stderr)
    return 0
