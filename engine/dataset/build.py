"""Building an immutable, numbered snapshot (DESIGN.md step 2) and loading one for training.

``build_snapshot`` reads the active examples, applies the rules (format → tokenizer → exact and
near de-duplication → leak-free split → leakage check → balance and readiness), and writes
``home/datasets/<n>/{train,validation,test}.jsonl`` (OpenAI chat JSONL, one ``{"messages": ...}``
a line) plus ``manifest.json``. The content hash covers the three files' names and bytes — what
training reads — so building the same content twice finds the first snapshot and makes no new
one. Which example sits on which line of which split is recorded in ``snapshot_example`` (and in
the manifest), so a model can always be traced back to its threads.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.dataset.config import DatasetConfig
from engine.dataset.dedupe import Cluster, DedupeResult, dedupe
from engine.dataset.findings import ERROR, WARNING, Entry, Finding, Origin, keys_with_errors
from engine.dataset.report import balance, readiness
from engine.dataset.split import SPLITS, SplitResult, check_leakage, split_entries
from engine.dataset.validate import DatasetError, TokenStats, token_findings, validate_format

MANIFEST = "manifest.json"
FORMAT = "threadtune-dataset/1"


@dataclass
class Analysis:
    """Everything the rules found about a set of examples, before anything is written."""

    entries: list[Entry]
    findings: list[Finding]
    tokens: TokenStats
    dedupe: DedupeResult
    split: SplitResult
    leakage: dict[str, list[str]]
    balance: dict[str, Any]
    readiness: dict[str, Any]
    excluded: int
    chat_template: str = ""
    end_of_turn: str = ""

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == WARNING]

    def counts(self) -> dict[str, Any]:
        return {
            **self.split.counts(),
            "examples": len(self.entries),
            "excluded": self.excluded,
            "duplicates": sum(len(c.dropped) for c in self.dedupe.clusters),
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "ready": self.readiness["ready"],
        }


@dataclass
class BuildResult:
    """A built (``created``) or found-again snapshot."""

    snapshot_id: int
    path: Path
    content_hash: str
    created: bool
    counts: dict[str, Any]
    manifest: dict[str, Any] = field(default_factory=dict)
    analysis: Analysis | None = None


def entries_from_storage(rows: Sequence[Any]) -> list[Entry]:
    """``storage.datasets.StoredExample`` rows → entries."""
    return [
        Entry(
            key=f"{r.channel}/{r.message_ts}",
            messages=r.messages,
            origin=Origin.of_example(
                source=r.source, channel=r.channel, thread_ts=r.thread_ts, message_ts=r.message_ts
            ),
            curators=tuple(r.curators),
            created_at=r.created_at,
            example_id=r.id,
            source=r.source,
        )
        for r in rows
    ]


def analyse(
    entries: Sequence[Entry], tokenizer, *, config: DatasetConfig, check_format: bool = True
) -> Analysis:
    """Apply every rule to ``entries``. Errors exclude an example; the rest is de-duplicated and
    split. ``check_format=False`` when the entries were already checked (parsed from a file)."""
    entries = list(entries)
    findings = validate_format(entries, workspace_url=config.workspace_url) if check_format else []
    bad = keys_with_errors(findings)
    well_formed = [e for e in entries if e.key not in bad]
    token_list, tokens = token_findings(well_formed, tokenizer, config=config)
    findings += token_list
    bad = keys_with_errors(findings)
    valid = [e for e in entries if e.key not in bad]

    deduped = dedupe(valid, config=config)
    findings += deduped.findings
    thread_of = {e.key: e.origin.thread_key for e in entries}
    split = split_entries(deduped.kept, deduped.clusters, thread_of, config=config)
    findings += split.findings
    leakage = check_leakage(split.splits, deduped.clusters, thread_of)
    if any(leakage.values()):  # never expected: the grouping makes it impossible; refuse loudly
        raise DatasetError(
            f"The split leaks between train, validation and test ({leakage}); the snapshot was not "
            "written."
        )
    figures, balance_findings = balance(deduped.kept, config=config)
    ready, ready_findings = readiness(len(deduped.kept), config=config)
    findings += balance_findings + ready_findings
    return Analysis(
        entries,
        findings,
        tokens,
        deduped,
        split,
        leakage,
        figures,
        ready,
        len(bad),
        chat_template=str(getattr(tokenizer, "chat_template", "") or ""),
        end_of_turn=str(tokenizer.eos_token),
    )


def render_split(entries: Sequence[Entry]) -> bytes:
    """OpenAI chat JSONL: one ``{"messages": [{"role", "content"}, ...]}`` a line."""
    lines = [
        json.dumps(
            {"messages": [{"role": m["role"], "content": m["content"]} for m in e.messages]},
            ensure_ascii=False,
        )
        for e in entries
    ]
    return "".join(line + "\n" for line in lines).encode("utf-8")


def content_hash_of(files: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in SPLITS:
        digest.update(f"{name}.jsonl".encode() + b"\0" + files[name] + b"\0")
    return digest.hexdigest()


def _cluster_list(clusters: Sequence[Cluster], where: dict[str, str]) -> list[dict[str, Any]]:
    return [c.to_dict(where) for c in sorted(clusters, key=lambda c: (c.kind, c.kept))]


def manifest_for(
    analysis: Analysis,
    *,
    snapshot_id: int,
    content_hash: str,
    base_model: str,
    config: DatasetConfig,
    created_by: str = "",
) -> dict[str, Any]:
    where = {e.key: e.origin.where(config.workspace_url) for e in analysis.entries}
    examples = {
        name: [
            {
                "line": line,
                "example_id": e.example_id,
                "key": e.key,
                "where": where[e.key],
                "thread": e.origin.thread_key,
                "tokens": e.tags.get("tokens"),
            }
            for line, e in enumerate(analysis.split.splits[name], 1)
        ]
        for name in SPLITS
    }
    template = analysis.chat_template
    return {
        "format": FORMAT,
        "snapshot": snapshot_id,
        "content_hash": content_hash,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "created_by": created_by,
        "base_model": base_model,
        "chat_template": template,
        "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest(),
        "end_of_turn": analysis.end_of_turn,
        "config": config.to_dict(),
        "files": {name: f"{name}.jsonl" for name in SPLITS},
        "counts": analysis.counts(),
        "tokens": analysis.tokens.to_dict(),
        "balance": analysis.balance,
        "readiness": analysis.readiness,
        "leakage": {"checked": True, "thread_groups": analysis.split.groups, **analysis.leakage},
        "clusters": _cluster_list(analysis.dedupe.clusters, where),
        "findings": [f.to_dict() for f in analysis.findings],
        "examples": examples,
    }


def read_manifest(path: Path | str) -> dict[str, Any]:
    manifest = Path(path) / MANIFEST
    return json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else {}


def build_snapshot(
    session,
    home: Path,
    *,
    base_model_path: Path | str,
    config: DatasetConfig | None = None,
    tokenizer=None,
    created_by: str = "",
) -> BuildResult:
    """Build a snapshot of the active examples under ``home/datasets/<n>/``, or find the existing
    snapshot with the same content. The caller owns the transaction (``session_scope``).

    ``tokenizer`` defaults to the one saved with ``base_model_path`` (``engine.basemodel``).
    Raises :class:`DatasetError` when no example is usable.
    """
    from storage import datasets as q

    config = config or DatasetConfig()
    if tokenizer is None:
        from engine.basemodel import load_tokenizer

        tokenizer = load_tokenizer(base_model_path)
    entries = entries_from_storage(q.active_examples_with_curators(session=session))
    if not entries:
        raise DatasetError(
            "There are no curated examples yet: curate answers in Slack or import a file first."
        )
    analysis = analyse(entries, tokenizer, config=config)
    if not any(analysis.split.splits.values()):
        raise DatasetError(
            f"None of the {len(entries)} examples is usable; fix the errors listed by `threadtune "
            "dataset validate`."
        )
    files = {name: render_split(analysis.split.splits[name]) for name in SPLITS}
    digest = content_hash_of(files)

    existing = q.snapshot_by_hash(session=session, content_hash=digest)
    snapshot = (
        None
        if existing
        else q.create_snapshot(
            session=session,
            content_hash=digest,
            path="",
            counts=analysis.counts(),
            created_by=created_by,
        )
    )
    if snapshot is None:  # the same content was built before (or concurrently)
        existing = existing or q.snapshot_by_hash(session=session, content_hash=digest)
        assert existing is not None and existing.id is not None
        return BuildResult(
            existing.id,
            Path(existing.path),
            digest,
            False,
            dict(existing.counts),
            read_manifest(existing.path),
            analysis,
        )

    assert snapshot.id is not None
    root = Path(home) / "datasets"
    root.mkdir(parents=True, exist_ok=True)
    target = root / str(snapshot.id)
    manifest = manifest_for(
        analysis,
        snapshot_id=snapshot.id,
        content_hash=digest,
        base_model=str(base_model_path),
        config=config,
        created_by=created_by,
    )
    tmp = Path(tempfile.mkdtemp(prefix=f".build-{snapshot.id}-", dir=root))
    try:
        for name in SPLITS:
            (tmp / f"{name}.jsonl").write_bytes(files[name])
        (tmp / MANIFEST).write_text(
            json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8"
        )
        tmp.chmod(0o755)
        if target.exists():  # left by a build whose transaction rolled back: no row claims it
            shutil.rmtree(target)
        tmp.replace(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    q.set_snapshot_path(session=session, snapshot=snapshot, path=str(target))
    q.add_snapshot_examples(
        session=session,
        snapshot_id=snapshot.id,
        members=[
            (e.example_id, name, line)
            for name in SPLITS
            for line, e in enumerate(analysis.split.splits[name], 1)
        ],
    )
    return BuildResult(snapshot.id, target, digest, True, analysis.counts(), manifest, analysis)


def read_split(path: Path | str, split: str) -> list[dict[str, Any]]:
    """One split of a snapshot folder as a list of ``{"messages": [...]}``."""
    file = Path(path) / f"{split}.jsonl"
    with file.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_snapshot(path: Path | str):
    """A snapshot folder as a ``datasets.DatasetDict`` with ``train``, ``validation`` and ``test``
    (each row ``{"messages": [{"role", "content"}, ...]}``; empty splits keep their features)."""
    from datasets import Dataset, DatasetDict, Features, List, Value

    features = Features({"messages": List({"role": Value("string"), "content": Value("string")})})
    folder = Path(path)
    if not (folder / MANIFEST).is_file():
        raise DatasetError(f"{folder} is not a dataset snapshot (it has no {MANIFEST}).")
    return DatasetDict(
        {
            name: Dataset.from_dict(
                {"messages": [r["messages"] for r in read_split(folder, name)]}, features=features
            )
            for name in SPLITS
        }
    )
