"""``threadtune dataset build|validate|import|export``: dataset snapshots from the command line.

``add_dataset_subcommands`` adds these to an existing ``dataset`` parser; ``register`` creates the
parser and also wires ``dataset stats`` from :mod:`bot.cli.curated`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.markup import escape

from bot.cli.common import CommandError, open_db
from bot.cli.curated import add_curated_subcommands, add_export_arguments, export_current
from bot.settings import Settings
from engine.basemodel import ensure_base_model, load_tokenizer
from engine.dataset import DatasetConfig
from engine.dataset.build import analyse, build_snapshot, entries_from_storage, read_split
from engine.dataset.findings import ERROR, group_findings
from engine.dataset.importer import import_examples, parse_source
from engine.dataset.split import SPLITS
from storage import datasets as q
from storage.db import session_scope

SHOWN_PER_RULE = 5  # a group this small lists its examples; a bigger one is one line


def register(subparsers: argparse._SubParsersAction) -> None:
    dataset = subparsers.add_parser(
        "dataset", help="build, validate, import and export dataset snapshots"
    )
    dataset_sub = dataset.add_subparsers(
        dest="dataset_command", metavar="SUBCOMMAND", required=True
    )
    add_dataset_subcommands(dataset_sub)
    add_curated_subcommands(dataset_sub)


def add_dataset_subcommands(dataset_sub: argparse._SubParsersAction) -> None:
    build = dataset_sub.add_parser(
        "build", help="build a numbered snapshot of the curated examples"
    )
    _config_arguments(build)
    build.add_argument(
        "--created-by", default="", help="who asked for the build (recorded with the snapshot)"
    )
    build.set_defaults(func=run_build)

    validate = dataset_sub.add_parser(
        "validate",
        help="check the curated examples (or a JSONL file / datasets folder) without building",
    )
    validate.add_argument(
        "file",
        nargs="?",
        type=Path,
        help="a chat JSONL file or Hugging Face datasets folder to check instead",
    )
    _config_arguments(validate)
    validate.set_defaults(func=run_validate)

    imp = dataset_sub.add_parser(
        "import", help="import a chat JSONL file or Hugging Face datasets folder (all or nothing)"
    )
    imp.add_argument(
        "file",
        type=Path,
        help="OpenAI chat JSONL file or a folder written by datasets' save_to_disk",
    )
    imp.add_argument(
        "--all", action="store_true", help="list every finding, not only the first ones"
    )
    imp.set_defaults(func=run_import)

    export = dataset_sub.add_parser(
        "export",
        help="write a snapshot (--snapshot N) or the current curated examples as chat JSONL",
    )
    export.add_argument(
        "--snapshot",
        type=int,
        metavar="N",
        help="the snapshot to export; without it, the current curated examples",
    )
    export.add_argument(
        "--split",
        choices=("all", "train", "validation", "test"),
        default="all",
        help="which split of the snapshot (default all)",
    )
    add_export_arguments(export)
    export.set_defaults(func=run_export)


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-length", type=int, help="tokens per training sequence (default 1024)"
    )
    parser.add_argument(
        "--near-dup-threshold",
        type=float,
        help="Jaccard similarity from which two examples are near duplicates (default 0.8)",
    )
    parser.add_argument(
        "--min-examples", type=int, help="fewest usable examples training accepts (default 10)"
    )
    parser.add_argument("--seed", type=int, help="salt of the split hash (default 0)")
    parser.add_argument(
        "--workspace-url",
        default="",
        help="https://<team>.slack.com, so findings link to their threads",
    )
    parser.add_argument(
        "--all", action="store_true", help="list every finding, not only the first ones"
    )


def _config(args: argparse.Namespace):
    overrides: dict[str, Any] = {}
    for name in ("max_length", "near_dup_threshold", "min_examples", "seed"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "workspace_url", ""):
        overrides["workspace_url"] = args.workspace_url
    if "min_examples" in overrides:
        overrides["target_examples"] = max(overrides["min_examples"], DatasetConfig.target_examples)
    return DatasetConfig(**overrides)


def _tokenizer(settings: Settings):  # noqa: ANN202
    path = ensure_base_model(settings.home, settings.base_model)
    return path, load_tokenizer(path)


# -- output ---------------------------------------------------------------------------------------


def print_findings(console, findings: list, *, show_all: bool = False) -> None:
    """Each kind of finding once with its count (errors first; see
    :func:`engine.dataset.findings.group_findings`), then where to look: every finding with
    ``--all``, else those of the small groups (a rule that hits many examples is one line)."""
    if not findings:
        console.print("No findings.")
        return
    shown = 0
    for group in group_findings(findings):
        colour = "red" if group.level == ERROR else "yellow"
        console.print(
            f"[{colour}]{group.level}[/{colour}] {escape(group.sentence())} "
            f"[dim]({group.rule})[/dim]",
            soft_wrap=True,
            highlight=False,
        )
        shown += 1
        if group.count == 1:
            continue
        listed = group.findings if show_all or group.count <= SHOWN_PER_RULE else []
        for f in listed:
            console.print(
                f"    {escape(f.where)}: {escape(f.message)}", soft_wrap=True, highlight=False
            )
        shown += len(listed)
    hidden = len(findings) - shown
    if hidden > 0 and not show_all:
        console.print(
            f"(--all lists each of the {len(findings)} findings; the manifest keeps them all.)"
        )


def print_analysis(console, analysis, *, show_all: bool = False) -> None:
    from rich.table import Table

    counts = analysis.counts()
    table = Table(title="Dataset")
    table.add_column("Figure")
    table.add_column("Value", justify="right")
    rows = [
        ("examples read", counts["examples"]),
        ("excluded by errors", counts["excluded"]),
        ("duplicates collapsed", counts["duplicates"]),
        ("train", counts["train"]),
        ("validation", counts["validation"]),
        ("test", counts["test"]),
        (
            "tokens p50 / p95 / max",
            f"{analysis.tokens.p50} / {analysis.tokens.p95} / {analysis.tokens.max}",
        ),
        (
            f"over max_length {analysis.tokens.max_length}",
            f"{analysis.tokens.share_over_max_length:.1%}",
        ),
        ("refusal-like answers", f"{analysis.balance['refusal_like_share']:.1%}"),
        (
            "answer chars p10 / p50 / p90",
            "{p10} / {p50} / {p90}".format(**analysis.balance["answer_chars"]),
        ),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    console.print(table)
    for title, key in (("Channel", "by_channel"), ("Curator", "by_curator")):
        figures = analysis.balance[key]
        if figures:
            t = Table(title=f"By {title.lower()}")
            t.add_column(title)
            t.add_column("Examples", justify="right")
            for name, n in list(figures.items())[:15]:
                t.add_row(str(name), str(n))
            console.print(t)
    print_findings(console, analysis.findings, show_all=show_all)


# -- commands -------------------------------------------------------------------------------------


def run_build(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console

    console = Console()
    config = _config(args)
    engine = open_db(settings)
    path, tokenizer = _tokenizer(settings)
    with session_scope(engine) as session:
        result = build_snapshot(
            session,
            settings.home,
            base_model_path=path,
            config=config,
            tokenizer=tokenizer,
            created_by=args.created_by,
        )
    if result.analysis is not None:
        print_analysis(console, result.analysis, show_all=args.all)
    counts = result.counts
    if result.created:
        console.print(
            f"[bold green]Built snapshot {result.snapshot_id}[/bold green] at {result.path}: "
            f"{counts['train']} train, {counts['validation']} validation, {counts['test']} test "
            f"(content hash {result.content_hash[:12]})."
        )
    else:
        console.print(
            "[bold]No new snapshot:[/bold] the content is the same as snapshot "
            f"{result.snapshot_id} "
            f"({result.path}, content hash {result.content_hash[:12]})."
        )
    ready = result.analysis.readiness if result.analysis else {"ready": counts.get("ready", True)}
    if not ready["ready"]:
        console.print("[red]Not ready to train yet[/red]: see the readiness finding above.")
    return 0


def run_validate(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console

    console = Console()
    config = _config(args)
    _, tokenizer = _tokenizer(settings)
    if args.file is not None:
        parsed = parse_source(args.file, config=config)
        analysis = analyse(parsed.entries, tokenizer, config=config, check_format=False)
        analysis.findings[:0] = parsed.findings
        analysis.excluded += len({f.example for f in parsed.errors})
        source = f"{args.file} ({parsed.rows} rows)"
    else:
        with session_scope(open_db(settings)) as session:
            entries = entries_from_storage(q.active_examples_with_curators(session=session))
        analysis = analyse(entries, tokenizer, config=config)
        source = "the curated examples"
    console.print(f"Checked {source}.")
    print_analysis(console, analysis, show_all=args.all)
    errors = len(analysis.errors)
    console.print(
        f"{errors} error(s): those examples would be left out of a snapshot."
        if errors
        else "No errors."
    )
    return 1 if errors else 0


def run_import(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console

    console = Console()
    with session_scope(open_db(settings)) as session:
        result = import_examples(session, args.file)
    if not result.ok:
        errors = [f for f in result.findings if f.level == "error"]
        bad_lines = len({f.where for f in errors})
        print_findings(console, errors, show_all=args.all)
        console.print(
            f"[red]Nothing was imported:[/red] {bad_lines} of {result.rows} rows of {result.name} "
            "have errors; fix them and import again."
        )
        return 1
    console.print(
        f"Imported {result.imported} examples from {result.name} "
        f"({result.skipped} skipped: already stored or repeated in the file)."
    )
    warnings = [f for f in result.findings if f.level == "warning" and f.rule != "format.no_system"]
    if warnings:
        print_findings(console, warnings, show_all=args.all)
    return 0


def run_export(args: argparse.Namespace, settings: Settings) -> int:
    if args.snapshot is None:
        return export_current(settings, args.output)

    with session_scope(open_db(settings)) as session:
        snapshot = q.get_snapshot(session=session, snapshot_id=args.snapshot)
    if snapshot is None or not Path(snapshot.path).is_dir():
        raise CommandError(
            f"There is no snapshot {args.snapshot}; `threadtune dataset build` makes one."
        )
    splits = SPLITS if args.split == "all" else (args.split,)
    records = [record for name in splits for record in read_split(snapshot.path, name)]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.output.with_name(args.output.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(args.output)
        print(
            f"Wrote {len(records)} examples of snapshot {snapshot.id} ({args.split}) to "
            f"{args.output}",
            file=sys.stderr,
        )
    return 0
