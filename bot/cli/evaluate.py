"""``threadtune eval JOB``: evaluate a finished job's model against the base model, register it,
write the report into the job's run folder (``eval/``) and, when a Slack bot token is set and
``--no-post`` is not given, post it in the job's thread as ``/tune eval`` does."""

from __future__ import annotations

import argparse

from bot.ask import AskConfig
from bot.backends import Serving
from bot.cli.common import open_db
from bot.evaluation import EvaluationRefused, parse_job_ref
from bot.services import Services
from bot.settings import ConfigError, Settings
from bot.slack_api import make_client
from engine.evaluate.report import VERDICT_TEXT, metric_rows
from engine.evaluate.run import EvalConfig
from engine.evaluate.service import EvaluationError, evaluate_job


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="evaluate a finished job's model against the base model")
    ev.add_argument("job", help="job number (7, #7 or job-7)")
    ev.add_argument(
        "--no-post",
        action="store_true",
        help=(
            "do not post the report to Slack (posted in the job's thread when SLACK_BOT_TOKEN is "
            "set)"
        ),
    )
    ev.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="token limit of each test answer (default: the evaluation default, 256)",
    )
    ev.add_argument(
        "--no-probes",
        action="store_true",
        help="skip the general-ability probes (faster; that check is then reported as skipped)",
    )
    ev.set_defaults(func=run)


def _config(args: argparse.Namespace, settings: Settings):  # noqa: ANN202
    try:
        return EvalConfig(
            verdict_mode="grounded" if settings.ask_grounding else "closed_book",
            **({"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {}),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def run(args: argparse.Namespace, settings: Settings) -> int:
    db = open_db(settings)
    config = _config(args, settings)
    probes = [] if args.no_probes else None
    try:
        job_id = parse_job_ref(args.job)
        if settings.slack_bot_token and not args.no_post:
            result = _evaluate_and_post(settings, db, job_id, config, probes)
        else:
            result = _evaluate(settings, db, job_id, config, probes)
    except (EvaluationRefused, EvaluationError) as exc:
        raise ConfigError(str(exc)) from exc
    finally:
        db.dispose()
    print_summary(result)
    if not settings.slack_bot_token and not args.no_post:
        print("SLACK_BOT_TOKEN is not set, so the report was not posted to Slack.")
    if result.report.generation_note:
        print(result.report.generation_note)
    print(f"Report: {result.markdown_path}")
    return 0


def _evaluate(settings: Settings, db, job_id: int, config, probes):  # noqa: ANN001, ANN202
    serving = Serving(settings, db)  # the in-process backend on BASE_MODEL and the adapter key
    return evaluate_job(
        db,
        settings.home,
        job_id,
        backend_factory=serving.inprocess,
        encryption_key=serving.key,
        generator_factory=serving.serving if serving.uses_vllm else None,
        config=config,
        probes=probes,
        grounding=AskConfig.from_settings(settings).grounding,
    )


def _evaluate_and_post(settings: Settings, db, job_id: int, config, probes):  # noqa: ANN001, ANN202
    # no scheduler: the bot's closes A/B rounds at their deadline
    services = Services.build(
        settings, db, make_client(settings.slack_bot_token, settings.slack_api_url)
    )
    services.evaluations.config = config
    services.evaluations.probes = probes
    return services.evaluations.run(job_id, background_ab=False)


def print_summary(result) -> None:  # noqa: ANN001
    """The verdict, its reasons and the metric table, for a terminal."""
    from rich.console import Console
    from rich.table import Table

    report = result.report
    console = Console()
    table = Table(title=f"Job {result.job_id}: {result.model.name} vs {report.base.name}")
    for name, justify in (
        ("metric", "left"),
        ("base", "right"),
        ("candidate", "right"),
        ("change", "right"),
    ):
        table.add_column(name, justify=justify)
    for row in metric_rows(report):
        table.add_row(*row)
    console.print(table)
    console.print(
        f"[bold]Verdict: {report.verdict}[/bold] — {VERDICT_TEXT[report.verdict]}", highlight=False
    )
    for reason in report.reasons:
        console.print(f"  - {reason}", highlight=False, markup=False)
