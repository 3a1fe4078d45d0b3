"""``threadtune models | deploy MODEL | rollback``: the deploy side for admins and scripts,
without Slack. Same code paths as ``/tune models|deploy|rollback``; ``threadtune ask`` is in
``bot.cli.ask``."""

from __future__ import annotations

import argparse
import sys

from bot.backends import Serving
from bot.blocks.models import model_line
from bot.cli.common import CommandError, open_db
from bot.commands.tune_deploy import model_rows
from bot.settings import Settings
from engine.registry.crypto import generate_key
from storage.db import session_scope


def register(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="list trained models and which one /ask uses")
    models.add_argument(
        "action",
        nargs="?",
        choices=("list", "new-key"),
        default="list",
        help="`new-key` prints a fresh THREADTUNE_ENCRYPTION_KEY",
    )
    models.set_defaults(func=run_models)
    deploy = sub.add_parser(
        "deploy", help="check, load and probe a model, then serve it behind /ask"
    )
    deploy.add_argument("model", help="a model name (tt-3), id, or job-<id>")
    deploy.add_argument(
        "--by", default="cli", help="who deploys (recorded in the deployment history)"
    )
    deploy.add_argument(
        "--force",
        action="store_true",
        help="deploy a model whose evaluation said reject, or that has none (needs --reason)",
    )
    deploy.add_argument("--reason", default="", help="why the override (recorded with the deploy)")
    deploy.set_defaults(func=run_deploy)
    rollback = sub.add_parser(
        "rollback", help="go back to the previously deployed model (or the base model)"
    )
    rollback.add_argument("--by", default="cli", help="who rolls back (recorded)")
    rollback.set_defaults(func=run_rollback)


def _db(settings: Settings):  # noqa: ANN202
    return open_db(settings)


def run_models(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "new-key":
        print(generate_key())
        return 0

    with session_scope(_db(settings)) as s:
        rows = model_rows(s)
    if not rows:
        print("No trained models yet; /ask uses the base model.")
        return 0
    deployed = next((r.name for r in rows if r.status == "deployed"), None)
    print(f"/ask uses {deployed or 'the base model'}.")
    for row in rows:
        line = model_line(row).replace("*", "").replace(" :lock:", " (encrypted)")
        print(line.replace(":warning: ", "! "))
    return 0


def _serving(settings: Settings):  # noqa: ANN202
    return Serving(settings, _db(settings))


def run_deploy(args: argparse.Namespace, settings: Settings) -> int:
    reason = " ".join(args.reason.split())
    if args.force and not reason:
        raise CommandError(
            "--force needs --reason \"…\": the override and its reason are recorded."
        )
    if reason and not args.force:
        raise CommandError("--reason goes with --force (an override of the evaluation gate).")
    outcome = _serving(settings).deploy(
        args.model, by_user=args.by, override_reason=reason if args.force else None
    )
    print(outcome.message, file=sys.stdout if outcome.ok else sys.stderr)
    if outcome.needs_override:
        print(
            f'To deploy it anyway: threadtune deploy {args.model} --force --reason "…"',
            file=sys.stderr,
        )
    if outcome.probe is not None:
        for row in outcome.probe.rows:
            print(
                f"  {row.similarity:.2f}  {'≠ base' if row.differs_from_base else '= base'}  "
                f"{row.prompt[:60]!r}"
            )
    return 0 if outcome.ok else 1


def run_rollback(args: argparse.Namespace, settings: Settings) -> int:
    outcome = _serving(settings).rollback(by_user=args.by)
    print(outcome.message, file=sys.stdout if outcome.ok else sys.stderr)
    return 0 if outcome.ok else 1
