"""Importing examples a team already has: an OpenAI chat JSONL file, or a Hugging Face
``datasets`` folder written with ``save_to_disk``.

The whole source is checked first with the chat-format rules; a single bad line (not JSON, not
UTF-8, too long, a wrong role, empty content, ...) gets a line-numbered finding and NOTHING is
imported. A clean source is redacted like curated Slack text and inserted in one statement, in the
caller's transaction. Conversations already stored (same normalised content) or repeated in the
file are skipped, so importing a file twice imports it once.

Imported examples are stored with ``source="import"``, ``channel="import"`` and
``thread_ts="<file name>:<line>"``: each line is its own thread, and findings point at the line.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.curation import content_hash
from engine.dataset.config import DatasetConfig
from engine.dataset.findings import ERROR, IMPORT_CHANNEL, Entry, Finding, Origin, finding
from engine.dataset.validate import DatasetError, format_findings

THREAD_TS_MAX = 32  # storage column width


@dataclass
class ParsedSource:
    """A source's examples that passed the format rules, and every finding."""

    name: str
    entries: list[Entry] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    rows: int = 0

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == ERROR]


@dataclass
class ImportResult:
    """What an import did: ``imported`` new examples, ``skipped`` already stored or repeated."""

    name: str
    rows: int
    imported: int
    skipped: int
    findings: list[Finding]

    @property
    def ok(self) -> bool:
        return not any(f.level == ERROR for f in self.findings)


def _entry(name: str, line: int, messages: Any) -> Entry:
    return Entry(
        key=f"{name}:{line}",
        messages=messages,
        origin=Origin(channel=IMPORT_CHANNEL, file=name, line=line),
        source="import",
    )


def _check(parsed: ParsedSource, record: Any, line: int, workspace_url: str) -> None:
    entry = _entry(parsed.name, line, record.get("messages") if isinstance(record, dict) else None)
    problems = format_findings(record, entry, workspace_url)
    parsed.findings.extend(problems)
    if not any(f.level == ERROR for f in problems):
        parsed.entries.append(entry)


def parse_jsonl(path: Path, *, config: DatasetConfig | None = None) -> ParsedSource:
    """Check every line of an OpenAI chat JSONL file (blank lines are ignored)."""
    config = config or DatasetConfig()
    parsed = ParsedSource(path.name)
    with path.open("rb") as handle:
        for line, raw in enumerate(handle, 1):
            where = _entry(path.name, line, None)

            def bad(rule: str, message: str, where: Entry = where) -> None:
                parsed.findings.append(finding(ERROR, rule, where, message))

            if len(raw) > config.max_line_bytes:
                parsed.rows += 1
                bad(
                    "format.line_too_long",
                    f"This line is {len(raw):,} bytes long, over the "
                    f"{config.max_line_bytes:,}-byte "
                    "limit for one example; shorten or split it.",
                )
                continue
            if not raw.strip():
                continue
            parsed.rows += 1
            try:
                text = raw.rstrip(b"\r\n").decode("utf-8-sig" if line == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                bad(
                    "format.encoding",
                    f"This line is not valid UTF-8 text (byte {exc.start + 1} cannot be read); "
                    "save the file as UTF-8.",
                )
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                bad(
                    "format.json", f"This line is not valid JSON ({exc.msg} at column {exc.colno})."
                )
                continue
            _check(parsed, record, line, config.workspace_url)
    return parsed


def _without_padding(value: Any) -> Any:
    """Arrow gives every struct the union of all rows' fields, missing ones as None: drop those."""
    if isinstance(value, dict):
        return {k: _without_padding(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_padding(v) for v in value]
    return value


def parse_hf_folder(path: Path, *, config: DatasetConfig | None = None) -> ParsedSource:
    """Check every row of a ``datasets`` folder (a Dataset, or each split of a DatasetDict)."""
    from datasets import Dataset, DatasetDict, load_from_disk

    config = config or DatasetConfig()
    try:
        loaded = load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 — datasets raises several kinds for "not a dataset folder"
        parsed = ParsedSource(path.name)
        parsed.findings.append(
            Finding(
                ERROR,
                "format.dataset_folder",
                path.name,
                f"This folder is not a Hugging Face dataset saved with save_to_disk ({exc}).",
            )
        )
        return parsed
    parts: list[tuple[str, Dataset]] = (
        [(f"{path.name}/{name}", loaded[name]) for name in sorted(loaded)]
        if isinstance(loaded, DatasetDict)
        else [(path.name, loaded)]
    )
    merged = ParsedSource(path.name)
    for name, dataset in parts:
        part = ParsedSource(name)
        for row_number, row in enumerate(dataset, 1):
            part.rows += 1
            _check(part, _without_padding(row), row_number, config.workspace_url)
        merged.entries += part.entries
        merged.findings += part.findings
        merged.rows += part.rows
    return merged


def parse_source(path: Path | str, *, config: DatasetConfig | None = None) -> ParsedSource:
    """A JSONL file or a ``datasets`` folder, checked."""
    path = Path(path)
    if path.is_dir():
        return parse_hf_folder(path, config=config)
    if path.is_file():
        return parse_jsonl(path, config=config)
    raise DatasetError(
        f"{path} does not exist: give a chat JSONL file or a Hugging Face datasets folder."
    )


def _default_redact() -> Callable[[str], Any]:
    from engine.redact import redact

    return redact


def _thread_ts(name: str, line: int) -> str:
    suffix = f":{line}"
    return name[: THREAD_TS_MAX - len(suffix)] + suffix


def import_examples(
    session,
    path: Path | str,
    *,
    config: DatasetConfig | None = None,
    redact: Callable[[str], Any] | None | bool = True,
) -> ImportResult:
    """Import ``path`` in the caller's transaction — all of it, or nothing when any line has an
    error. ``redact`` is :func:`engine.redact.redact` by default (``None``/``False``: keep text)."""
    from storage import datasets as q

    parsed = parse_source(path, config=config)
    if parsed.errors:
        return ImportResult(parsed.name, parsed.rows, 0, 0, parsed.findings)
    redactor = _default_redact() if redact is True else (redact or None)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for entry in parsed.entries:
        messages = []
        counts: dict[str, int] = {}
        for message in entry.messages:
            text = message["content"]
            if redactor is not None:
                result = redactor(text)
                text = result.text
                for kind, n in result.counts.items():
                    counts[kind] = counts.get(kind, 0) + n
            messages.append({"role": message["role"], "content": text})
        digest = content_hash(messages)
        if digest in seen:
            continue
        seen.add(digest)
        rows.append(
            {
                "source": "import",
                "channel": IMPORT_CHANNEL,
                "thread_ts": _thread_ts(entry.origin.file, entry.origin.line),
                "message_ts": "imp-" + digest[:28],
                "messages": messages,
                "redactions": counts,
                "content_hash": digest,
            }
        )
    stored = q.existing_content_hashes(session=session, hashes=[r["content_hash"] for r in rows])
    fresh = [r for r in rows if r["content_hash"] not in stored]
    q.insert_examples(session=session, examples=fresh)
    return ImportResult(
        parsed.name, parsed.rows, len(fresh), len(parsed.entries) - len(fresh), parsed.findings
    )
