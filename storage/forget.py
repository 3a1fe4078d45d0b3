"""Queries for forgetting content everywhere the database keeps it (``engine.forget`` drives them).

Text is matched by the caller's rules (``engine.forget.Needles``): these functions take a
``prefixes`` list to narrow rows in SQL and a ``scrub`` callable that returns a text with the
forgotten content replaced, so storage holds no matching rules of its own.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Collection, Iterable
from typing import Any

from sqlalchemy import JSON, String, Table, or_, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.types import TypeDecorator
from sqlmodel import Session, SQLModel, col

from storage.models import (
    AskLog,
    DatasetSnapshot,
    Example,
    Job,
    Model,
    SnapshotExample,
    utcnow,
)

Scrub = Callable[[str], str]
CHUNK = 500
ANON_PREFIX = "anon-"


def examples_of_message(*, session: Session, channel: str, ts: str) -> list[Example]:
    """The examples a Slack message is part of as far as the database knows: the one whose final
    answer it is, or every example of the thread it started."""
    stmt = select(Example).where(
        col(Example.channel) == channel,
        or_(col(Example.message_ts) == ts, col(Example.thread_ts) == ts),
    )
    return list(session.execute(stmt).scalars().all())


def examples_of_user(*, session: Session, user: str) -> list[Example]:
    """The examples ``user`` answered or asked (every turn of an example is one of the two)."""
    stmt = select(Example).where(
        or_(col(Example.answer_user) == user, col(Example.question_user) == user)
    )
    return list(session.execute(stmt).scalars().all())


def examples_containing(
    *, session: Session, found_in: Callable[[str], bool]
) -> list[Example]:
    """Every example (any status) one of whose turns holds forgotten text. Reads every example's
    turns: JSON is stored escaped, so SQL ``LIKE`` can't be trusted to find the text."""
    found: list[Example] = []
    last = 0
    while True:
        rows = session.execute(
            select(col(Example.id), col(Example.messages))
            .where(col(Example.id) > last)
            .order_by(col(Example.id))
            .limit(CHUNK)
        ).all()
        if not rows:
            return found
        for example_id, messages in rows:
            last = example_id
            if any(found_in(str(m.get("content", ""))) for m in messages or []):
                example = session.get(Example, example_id)
                if example is not None:
                    found.append(example)


def snapshot_lines(
    *, session: Session, example_ids: Collection[int]
) -> dict[int, dict[str, set[int]]]:
    """Where ``example_ids`` sit in snapshot files: snapshot id → split → line numbers."""
    where: dict[int, dict[str, set[int]]] = {}
    ids = sorted(example_ids)
    for start in range(0, len(ids), CHUNK):
        rows = session.execute(
            select(
                col(SnapshotExample.snapshot_id), col(SnapshotExample.split),
                col(SnapshotExample.line),
            ).where(col(SnapshotExample.example_id).in_(ids[start : start + CHUNK]))
        ).all()
        for snapshot_id, split, line in rows:
            where.setdefault(snapshot_id, {}).setdefault(split, set()).add(line)
    return where


def delete_examples(*, session: Session, examples: Iterable[Example]) -> int:
    count = 0
    for example in examples:
        session.delete(example)
        count += 1
    session.flush()
    return count


def all_snapshots(*, session: Session) -> list[DatasetSnapshot]:
    stmt = select(DatasetSnapshot).order_by(col(DatasetSnapshot.id))
    return list(session.execute(stmt).scalars())


def remove_snapshot_lines(
    *, session: Session, snapshot_id: int, removed: dict[str, list[int]]
) -> int:
    """Record that ``removed`` lines (split → 1-based line numbers in the file as it was) left a
    snapshot's files: their membership rows go, later lines move up, and the snapshot counts
    them in ``forgotten_lines``. Returns how many lines were removed."""
    total = 0
    for split, lines in removed.items():
        gone = sorted(set(lines))
        if not gone:
            continue
        total += len(gone)
        members = session.execute(
            select(SnapshotExample).where(
                col(SnapshotExample.snapshot_id) == snapshot_id, col(SnapshotExample.split) == split
            )
        ).scalars()
        for member in list(members):
            if member.line in gone:
                session.delete(member)
            else:
                member.line -= sum(1 for g in gone if g < member.line)
                session.add(member)
    snapshot = session.get(DatasetSnapshot, snapshot_id)
    if snapshot is not None and total:
        snapshot.forgotten_lines += total
        session.add(snapshot)
    session.flush()
    return total


def jobs_of_snapshots(*, session: Session, snapshot_ids: Collection[int]) -> list[Job]:
    if not snapshot_ids:
        return []
    stmt = select(Job).where(col(Job.snapshot_id).in_(sorted(snapshot_ids)))
    return list(session.execute(stmt).scalars())


def jobs_with_run_dirs(*, session: Session) -> list[Job]:
    return list(session.execute(select(Job).where(col(Job.run_dir) != "")).scalars())


def mark_models(
    *, session: Session, snapshot_ids: Collection[int], job_ids: Collection[int]
) -> list[str]:
    """Mark every model trained on one of the snapshots or by one of the jobs as trained on
    content since forgotten (the first time only); returns the names of all such models."""
    conditions = []
    if snapshot_ids:
        conditions.append(col(Model.snapshot_id).in_(sorted(snapshot_ids)))
    if job_ids:
        conditions.append(col(Model.job_id).in_(sorted(job_ids)))
    if not conditions:
        return []
    models = list(session.execute(select(Model).where(or_(*conditions))).scalars())
    now = utcnow()
    for model in models:
        if model.content_forgotten_at is None:
            model.content_forgotten_at = now
            session.add(model)
    session.flush()
    return [m.name for m in models]


def _tables() -> list[Table]:
    return list(SQLModel.metadata.sorted_tables)


def _primary_key(table: Table) -> list[Any]:
    return list(table.primary_key.columns)


def is_text(column: Any) -> bool:
    """Whether a column holds text (``String``, ``Text``, sqlmodel's ``AutoString``)."""
    kind = column.type
    if isinstance(kind, TypeDecorator):
        kind = kind.impl_instance
    return isinstance(kind, String) and not isinstance(kind, JSON)


def _walk(value: Any, scrub: Scrub) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, list):
        return [_walk(v, scrub) for v in value]
    if isinstance(value, dict):
        return {k: _walk(v, scrub) for k, v in value.items()}
    return value


def scrub_columns(*, session: Session, prefixes: Collection[str], scrub: Scrub) -> dict[str, int]:
    """Rewrite every text and JSON value of every table that holds forgotten text; returns
    ``table.column`` → rows rewritten. Text columns are narrowed with ``LIKE`` on ``prefixes``
    (then ``scrub`` decides); JSON columns are read whole, since JSON stores text escaped."""
    changed: dict[str, int] = {}
    if not prefixes:
        return changed
    for table in _tables():
        key = _primary_key(table)
        for column in table.columns:
            if isinstance(column.type, JSON):
                candidates = select(*key, column).where(column.is_not(None))
            elif is_text(column):
                candidates = select(*key, column).where(
                    or_(*[column.contains(p, autoescape=True) for p in prefixes])
                )
            else:
                continue
            count = 0
            for row in session.execute(candidates).all():
                *ids, value = row
                new = _walk(value, scrub)
                if new == value:
                    continue
                where = [k == v for k, v in zip(key, ids, strict=True)]
                session.execute(update(table).where(*where).values({column.name: new}))
                count += 1
            if count:
                changed[f"{table.name}.{column.name}"] = count
    session.flush()
    return changed


def forget_asks_of(*, session: Session, user: str) -> list[str]:
    """Empty the question and answer of every ask ``user`` made (the row stays, for counts);
    returns the questions as they were, so their copies elsewhere can be forgotten too."""
    rows = list(session.execute(select(AskLog).where(col(AskLog.user) == user)).scalars())
    questions = [r.question for r in rows if r.question]
    for row in rows:
        row.question, row.answer = "", ""
        session.add(row)
    session.flush()
    return questions


def anonymise_user(*, session: Session, user: str) -> dict[str, int]:
    """Replace ``user`` wherever a column holds exactly that id — voters, curators, askers,
    requesters — with a fresh ``anon-…`` token per row, so votes and counts stay (one vote per
    pair still) but no longer name anyone. Returns ``table.column`` → rows changed."""
    changed: dict[str, int] = {}
    for table in _tables():
        key = _primary_key(table)
        for column in table.columns:
            if not is_text(column) or column in key:
                continue
            length = getattr(column.type, "length", None)
            if length is not None and length < len(user):
                continue
            rows = session.execute(select(*key).where(column == user)).all()
            for ids in rows:
                where = [k == v for k, v in zip(key, ids, strict=True)]
                session.execute(
                    update(table)
                    .where(*where)
                    .values({column.name: ANON_PREFIX + secrets.token_hex(6)})
                )
            if rows:
                changed[f"{table.name}.{column.name}"] = len(rows)
    session.flush()
    return changed


def secure_delete(*, session: Session) -> None:
    """On SQLite, make this session's connection overwrite what it deletes with zeros."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(text("PRAGMA secure_delete=ON"))


def compact(db: Engine, attempts: int = 25) -> str:
    """Leave no deleted bytes in the database's files; returns what was done, in words.

    SQLite keeps deleted rows in free pages and in the write-ahead log: ``VACUUM`` rewrites the
    file with live rows only, then a ``TRUNCATE`` checkpoint empties the WAL (retried while
    another process is reading). PostgreSQL keeps dead row versions until (auto)vacuum reuses
    their space; no query can read them, and ``VACUUM FULL`` is the operator's call (it locks)."""
    if db.dialect.name != "sqlite":
        return (
            "PostgreSQL: rows rewritten; dead row versions stay in its files until autovacuum "
            "reuses the space (run VACUUM FULL to rewrite them now)"
        )
    with db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM")
        # A TRUNCATE checkpoint blocks every writer while it waits for readers: wait briefly,
        # retry, and give up after a few seconds rather than stall the bot's curation.
        conn.exec_driver_sql("PRAGMA busy_timeout=100")
        try:
            for _ in range(attempts):
                busy, _log, _done = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
                if not busy:
                    return "SQLite: vacuumed, write-ahead log emptied"
                time.sleep(0.1)
        finally:
            conn.exec_driver_sql("PRAGMA busy_timeout=30000")
    return (
        "SQLite: vacuumed; the write-ahead log was busy (another process reading) and keeps old "
        "frames until SQLite's next checkpoint (run the same `threadtune forget` again to empty "
        "it now)"
    )
