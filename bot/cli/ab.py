"""``threadtune ab export``: the A/B battle log and DPO preference pairs as JSONL.

Voters are pseudonymised with HMAC-SHA256 keyed by a salt kept in ``THREADTUNE_HOME/ab-voter-salt``,
created once (random, 32 bytes, readable by the owner only). A file rather than a value derived
from SLACK_SIGNING_SECRET: exports are made on machines that hold no Slack secrets, and rotating the
signing secret must not change every voter's pseudonym. Keep the file to keep pseudonyms stable
across exports; delete it to make future exports unlinkable to past ones.
"""

from __future__ import annotations

import argparse
import os
import secrets
from pathlib import Path

from bot.cli.common import open_db
from bot.settings import Settings
from engine.ab.export import load_records, write_battle_log, write_preference_pairs
from storage.db import session_scope

SALT_FILE = "ab-voter-salt"


def register(sub: argparse._SubParsersAction) -> None:
    ab = sub.add_parser("ab", help="A/B rounds")
    ab_sub = ab.add_subparsers(dest="ab_command", required=True)
    export = ab_sub.add_parser(
        "export",
        help="write the battle log and preference pairs (prompt, chosen, rejected) as JSONL",
    )
    export.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="folder for battles.jsonl and preferences.jsonl (default THREADTUNE_HOME/exports/ab)",
    )
    export.add_argument(
        "--round", type=int, default=None, help="only this round (default: every round)"
    )
    export.add_argument(
        "--per",
        choices=("pair", "vote"),
        default="pair",
        help=(
            "preference pairs: one per pair with a clear majority (default) or one per decisive "
            "vote"
        ),
    )
    export.set_defaults(func=run_export)


def voter_salt(home: Path) -> bytes:
    """The export salt, created on first use (atomically: two exports at once agree on it)."""
    path = Path(home).expanduser() / SALT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
    salt = path.read_text().strip()
    if not salt:
        raise RuntimeError(f"{path} is empty; delete it and export again to create a new salt.")
    return salt.encode()


def run_export(args: argparse.Namespace, settings: Settings) -> int:
    out = args.output_dir or settings.home / "exports" / "ab"
    out.mkdir(parents=True, exist_ok=True)
    engine = open_db(settings)
    try:
        with session_scope(engine) as session:
            records = load_records(session=session, round_id=args.round)
    finally:
        engine.dispose()
    votes = write_battle_log(records, out / "battles.jsonl", voter_salt(settings.home))
    pairs = write_preference_pairs(records, out / "preferences.jsonl", per=args.per)
    print(
        f"Wrote {votes} votes to {out / 'battles.jsonl'} and {pairs} preference pairs to "
        f"{out / 'preferences.jsonl'}."
    )
    return 0
