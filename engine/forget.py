"""Forgetting: remove a piece of curated content from every copy threadtune keeps (DESIGN.md
step 8). Every entry point uses :func:`forget` — a Slack message deleted, a thread excluded,
``threadtune forget --message`` and ``--user``.

What it reaches, in order:

1. **Database** (one transaction): the examples go (their index vectors and snapshot memberships
   with them); every text and JSON value of every table that still holds the text — ``/ask``
   audit rows (a quoted curated answer), A/B pairs, evaluation reports on model rows, job events —
   has it replaced by ``[forgotten]``. Forgetting a person also empties their ``/ask`` questions
   and turns their id into an ``anon-…`` token wherever a column holds it (their A/B votes stay,
   anonymous). On SQLite the connection deletes with ``secure_delete``.
2. **Snapshot files** (``datasets/<n>/*.jsonl``): the lines of forgotten examples are removed and
   the manifest and membership rows renumbered. The snapshot keeps its number and is counted as
   rewritten (``forgotten_lines``); its content hash no longer matches its files, so a rebuild
   makes a fresh snapshot rather than finding this one.
3. **Run folders** (``runs/<job>/``): the same lines leave ``data/*.jsonl``; the checkpoints of
   every affected job that is not running are deleted — they hold optimizer and adapter state
   derived from the text and serve only to resume a run that has finished. A running job is
   reported (cancel it and train again).
4. **Other files** under ``THREADTUNE_HOME`` (manifests, evaluation reports, logs of runs): the
   text is replaced wherever it appears, whole or as a truncated excerpt. Weights, optimizer
   state, charts and the model registry (``models/``) hold no text and are not read.
5. **Models** trained on an affected snapshot or job are marked *trained on content since
   deleted*: a model can't be un-trained, so admins decide whether to retrain.
6. **Database files**: SQLite is vacuumed and its write-ahead log emptied, so no deleted byte
   stays in a free page or a WAL frame (``storage.forget.compact``).

The in-memory retrieval index and answer cache of a running bot follow the database (the bot
syncs its index, and a new index version empties the cache). Text shorter than
:data:`MIN_CHARS` is too common to search for: it goes with its example's line and row only.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import Engine

from storage import forget as q
from storage.db import session_scope
from storage.models import Example

log = logging.getLogger(__name__)

REPLACEMENT = "[forgotten]"
MIN_CHARS = 12
"""Shortest text searched for: shorter turns ("thanks!", "any update?") are everywhere."""
EXCERPT_CHARS = 40
"""A truncated copy (a report's sample cut at N characters) is found from this many characters."""
SPLITS = ("train", "validation", "test")
SKIP_SUFFIXES = frozenset({".safetensors", ".bin", ".pt", ".pth", ".png", ".npy", ".enc", ".gguf"})
MAX_SCAN_BYTES = 256 * 1024 * 1024
_ELLIPSIS = re.compile(r"(…|\.\.\.|\s|$)")


class Needles:
    """The texts being forgotten, in every spelling a copy may have: as written, and escaped as
    JSON (with and without ``ensure_ascii``); each line of a multi-line text counts on its own,
    since a report may quote it line by line."""

    def __init__(self, texts: Iterable[str]) -> None:
        pieces: set[str] = set()
        for text in texts:
            for part in [text, *text.splitlines()]:
                part = part.strip()
                if len(part) >= MIN_CHARS:
                    pieces.add(part)
        self.texts = sorted(pieces, key=len, reverse=True)
        spellings: dict[str, None] = {}
        for piece in self.texts:
            for spelling in (
                piece,
                json.dumps(piece)[1:-1],
                json.dumps(piece, ensure_ascii=False)[1:-1],
            ):
                spellings[spelling] = None
        self.spellings = sorted(spellings, key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self.texts)

    @property
    def prefixes(self) -> list[str]:
        """What narrows a database search: a copy, whole or truncated, starts with one of these."""
        return sorted({s[:EXCERPT_CHARS] for s in self.spellings})

    def found_in(self, text: str) -> bool:
        """Whether ``text`` holds a whole forgotten text (any spelling)."""
        return any(s in text for s in self.spellings)

    def scrub(self, text: str) -> str:
        """``text`` with every copy replaced by :data:`REPLACEMENT`: a whole copy, or a truncated
        one (at least :data:`EXCERPT_CHARS` of the start, then an ellipsis, a space or the end)."""
        if not self.spellings:
            return text
        for spelling in self.spellings:
            head = spelling[:EXCERPT_CHARS]
            start = text.find(head)
            while start >= 0:
                end = start + len(head)
                while (
                    end - start < len(spelling)
                    and end < len(text)
                    and text[end] == spelling[end - start]
                ):
                    end += 1
                whole = end - start == len(spelling)
                if whole or _ELLIPSIS.match(text, end):
                    text = text[:start] + REPLACEMENT + text[end:]
                    end = start + len(REPLACEMENT)
                start = text.find(head, end)
        return text


@dataclass
class ForgetReport:
    """What :func:`forget` removed, and where."""

    what: str
    examples: list[int] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # table.column → rows rewritten
    anonymised: dict[str, int] = field(default_factory=dict)
    snapshots: dict[int, int] = field(default_factory=dict)  # snapshot id → lines removed
    run_lines: dict[int, int] = field(default_factory=dict)  # job id → data lines removed
    checkpoints: list[str] = field(default_factory=list)
    running_jobs: list[int] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # other files rewritten
    deleted_files: list[str] = field(default_factory=list)
    database: str = ""

    @property
    def found(self) -> bool:
        return bool(
            self.examples or self.rows or self.anonymised or self.snapshots or self.run_lines
            or self.files or self.deleted_files
        )

    def lines(self) -> list[str]:
        """The report in words, one line per place (no forgotten text in it)."""
        out = [f"Forgot {self.what}."]
        if not self.found:
            out.append("Nothing threadtune keeps held it.")
        if self.examples:
            ids = ", ".join(f"#{i}" for i in self.examples)
            out.append(f"Examples deleted (with their index entries): {ids}.")
        for where, count in sorted(self.rows.items()):
            out.append(f"Database {where}: text replaced in {count} row(s).")
        for where, count in sorted(self.anonymised.items()):
            out.append(f"Database {where}: {count} row(s) made anonymous.")
        for snapshot, count in sorted(self.snapshots.items()):
            out.append(
                f"Snapshot #{snapshot}: {count} line(s) removed from its files (rewritten; "
                "build a new snapshot before training again)."
            )
        for job, count in sorted(self.run_lines.items()):
            out.append(f"Run folder of job {job}: {count} line(s) removed from its data copy.")
        for path in self.checkpoints:
            out.append(f"Checkpoints deleted: {path}.")
        for job in self.running_jobs:
            out.append(
                f"Job {job} is running on this content: cancel it and train again (its "
                "checkpoints were left alone)."
            )
        for path in self.files:
            out.append(f"File rewritten: {path}.")
        for path in self.deleted_files:
            out.append(f"File deleted (binary, held the text): {path}.")
        if self.models:
            out.append(
                "Marked 'trained on content since deleted' (a model can't be un-trained; retrain "
                f"to drop it): {', '.join(self.models)}."
            )
        if self.database:
            out.append(f"Database files: {self.database}.")
        return out


def _texts_of(example: Example) -> list[str]:
    return [str(m.get("content", "")) for m in example.messages or []]


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        Path(tmp).chmod(path.stat().st_mode & 0o777)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _overwrite(path: Path, data: bytes) -> None:
    """Rewrite a log in place: a process appending to it keeps its handle (a replaced file would
    leave it writing to a deleted one)."""
    with path.open("r+b") as handle:
        handle.write(data)
        handle.truncate()


def _drop_lines(
    path: Path, lines: set[int], raw: set[bytes], needles: Needles
) -> tuple[list[int], list[bytes]]:
    """Remove from a JSONL file the given 1-based lines, lines equal to one of ``raw`` and lines
    holding forgotten text; returns the line numbers removed and their bytes."""
    kept: list[bytes] = []
    gone: list[int] = []
    gone_raw: list[bytes] = []
    for number, line in enumerate(path.read_bytes().splitlines(keepends=True), 1):
        body = line.rstrip(b"\n")
        if (
            number in lines
            or body in raw
            or needles.found_in(body.decode("utf-8", errors="replace"))
        ):
            gone.append(number)
            gone_raw.append(body)
        else:
            kept.append(line)
    if gone:
        _atomic_write(path, b"".join(kept))
    return gone, gone_raw


def _renumber_manifest(folder: Path, removed: dict[str, list[int]], total_before: int) -> None:
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return
    data = json.loads(manifest.read_text(encoding="utf-8"))
    examples = data.get("examples") or {}
    counts = data.get("counts") or {}
    for split, gone in removed.items():
        rows = [r for r in examples.get(split, []) if r.get("line") not in gone]
        for row in rows:
            row["line"] -= sum(1 for g in gone if g < row["line"])
        examples[split] = rows
        if isinstance(counts.get(split), int):
            counts[split] = max(0, counts[split] - len(gone))
    removed_now = sum(len(g) for g in removed.values())
    if isinstance(counts.get("examples"), int):
        counts["examples"] = max(0, counts["examples"] - removed_now)
    data["forgotten"] = {
        "lines": total_before + removed_now,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "note": "lines were removed after the build; content_hash describes the files as built",
    }
    _atomic_write(manifest, json.dumps(data, indent=1, ensure_ascii=False).encode("utf-8"))


def _database_files(db: Engine) -> set[Path]:
    if db.dialect.name != "sqlite" or not db.url.database:
        return set()
    main = Path(db.url.database).resolve()
    return {main, *(main.with_name(main.name + s) for s in ("-wal", "-shm", "-journal"))}


def _sweep(home: Path, skip: set[Path], needles: Needles, user: str | None) -> tuple[list, list]:
    """Scrub every other file under ``home`` (see the module docstring for what is skipped)."""
    rewritten: list[str] = []
    deleted: list[str] = []
    if not home.is_dir():
        return rewritten, deleted
    spellings = [s.encode("utf-8") for s in needles.spellings]
    heads = {s[:EXCERPT_CHARS] for s in spellings}
    quoted_user = json.dumps(user).encode() if user else None
    registry = (home / "models").resolve()
    for path in sorted(home.rglob("*")):
        resolved = path.resolve()
        if (
            not path.is_file()
            or path.is_symlink()
            or resolved in skip
            or resolved.is_relative_to(registry)
            or path.suffix in SKIP_SUFFIXES
            or path.stat().st_size > MAX_SCAN_BYTES
        ):
            continue
        data = path.read_bytes()
        holds_text = any(h in data for h in heads)
        holds_user = quoted_user is not None and quoted_user in data
        if not holds_text and not holds_user:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            if any(s in data for s in spellings):
                path.unlink()
                deleted.append(str(path.relative_to(home)))
            continue
        new = needles.scrub(text)
        if user:
            new = new.replace(json.dumps(user), json.dumps(REPLACEMENT))
        if new != text:
            if path.suffix == ".log":
                _overwrite(path, new.encode("utf-8"))
            else:
                _atomic_write(path, new.encode("utf-8"))
            rewritten.append(str(path.relative_to(home)))
    return rewritten, deleted


def forget(
    db: Engine,
    home: Path | str,
    *,
    what: str,
    example_ids: Iterable[int] = (),
    texts: Iterable[str] = (),
    user: str | None = None,
    message: tuple[str, str] | None = None,
) -> ForgetReport:
    """Forget examples ``example_ids``, the ``texts`` given, the examples of Slack ``message``
    (channel, ts) and, with ``user``, everything of that person (see the module docstring).
    Idempotent: forgetting again finds nothing and says so."""
    home = Path(home).expanduser()
    report = ForgetReport(what)
    texts = list(texts)
    with session_scope(db) as s:
        q.secure_delete(session=s)
        chosen: dict[int, Example] = {}
        for example_id in example_ids:
            example = s.get(Example, example_id)
            if example is not None and example.id is not None:
                chosen[example.id] = example
        if message is not None:
            for example in q.examples_of_message(session=s, channel=message[0], ts=message[1]):
                assert example.id is not None  # read from a stored row
                chosen[example.id] = example
        if user:
            for example in q.examples_of_user(session=s, user=user):
                assert example.id is not None  # read from a stored row
                chosen[example.id] = example
            texts += q.forget_asks_of(session=s, user=user)
        for example in chosen.values():
            texts += _texts_of(example)
        needles = Needles(texts)
        if needles:
            for example in q.examples_containing(session=s, found_in=needles.found_in):
                assert example.id is not None  # read from a stored row
                chosen[example.id] = example
        lines = q.snapshot_lines(session=s, example_ids=list(chosen))
        report.examples = sorted(chosen)
        q.delete_examples(session=s, examples=chosen.values())
        report.rows = q.scrub_columns(session=s, prefixes=needles.prefixes, scrub=needles.scrub)
        if user:
            report.anonymised = q.anonymise_user(session=s, user=user)
        snapshots = [(x.id, Path(x.path), x.forgotten_lines) for x in q.all_snapshots(session=s)]
        jobs = [(j.id, Path(j.run_dir), j.state, j.snapshot_id)
                for j in q.jobs_with_run_dirs(session=s)]

    removed_raw: set[bytes] = set()
    renumber: dict[int, dict[str, list[int]]] = {}
    for snapshot_id, folder, before in snapshots:
        assert snapshot_id is not None
        removed: dict[str, list[int]] = {}
        for split in SPLITS:
            file = folder / f"{split}.jsonl"
            if file.is_file():
                gone, raw = _drop_lines(
                    file, lines.get(snapshot_id, {}).get(split, set()), set(), needles
                )
                if gone:
                    removed[split] = gone
                    removed_raw.update(raw)
        if removed:
            _renumber_manifest(folder, removed, before)
            renumber[snapshot_id] = removed
            report.snapshots[snapshot_id] = sum(len(g) for g in removed.values())

    affected_jobs: list[int] = []
    for job_id, run_dir, state, snapshot_id in jobs:
        assert job_id is not None
        dropped = 0
        data = run_dir / "data"
        if data.is_dir():
            for file in sorted(data.glob("*.jsonl")):
                gone, _ = _drop_lines(file, set(), removed_raw, needles)
                dropped += len(gone)
        if dropped:
            report.run_lines[job_id] = dropped
        if not dropped and snapshot_id not in report.snapshots:
            continue
        affected_jobs.append(job_id)
        checkpoints = run_dir / "checkpoints"
        if state == "running":
            report.running_jobs.append(job_id)
        elif checkpoints.is_dir():
            shutil.rmtree(checkpoints)
            report.checkpoints.append(str(checkpoints))

    with session_scope(db) as s:
        for snapshot_id, removed in renumber.items():
            q.remove_snapshot_lines(session=s, snapshot_id=snapshot_id, removed=removed)
        report.models = q.mark_models(
            session=s, snapshot_ids=list(report.snapshots), job_ids=affected_jobs
        )

    report.files, report.deleted_files = _sweep(home, _database_files(db), needles, user)
    report.database = q.compact(db)
    log.info("%s", " ".join(report.lines()))
    return report
