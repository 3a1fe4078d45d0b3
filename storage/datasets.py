"""Queries for dataset snapshots and the examples they are built from."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from storage.models import DatasetSnapshot, Example, ExampleCurator, SnapshotExample, utcnow

IN_CHUNK = 500  # keeps IN (...) lists well under SQLite's bound-parameter limit


@dataclass(frozen=True)
class StoredExample:
    """An active example as the dataset build reads it (plain values, no ORM state)."""

    id: int
    source: str
    channel: str
    thread_ts: str
    message_ts: str
    messages: Any
    created_at: datetime | None
    curators: tuple[str, ...]


def active_examples_with_curators(*, session: Session) -> list[StoredExample]:
    """Every active example with its curators, in id order. Two queries whatever the size."""
    # sqlmodel types select() for at most four columns; these seven come back as a plain tuple
    rows = session.exec(
        select(  # type: ignore[call-overload]
            Example.id,
            Example.source,
            Example.channel,
            Example.thread_ts,
            Example.message_ts,
            Example.messages,
            Example.created_at,
        )
        .where(Example.status == "active")
        .order_by(col(Example.id))
    ).all()
    curators: dict[int, list[str]] = {}
    pairs = session.exec(
        select(ExampleCurator.example_id, ExampleCurator.user_id)
        .join(Example, col(Example.id) == col(ExampleCurator.example_id))
        .where(Example.status == "active")
        .order_by(col(ExampleCurator.id))
    ).all()
    for example_id, user_id in pairs:
        curators.setdefault(example_id, []).append(user_id)
    return [
        StoredExample(r[0], r[1], r[2], r[3], r[4], r[5], r[6], tuple(curators.get(r[0], ())))
        for r in rows
    ]


def snapshot_by_hash(*, session: Session, content_hash: str) -> DatasetSnapshot | None:
    return session.exec(
        select(DatasetSnapshot).where(DatasetSnapshot.content_hash == content_hash)
    ).first()


def get_snapshot(*, session: Session, snapshot_id: int) -> DatasetSnapshot | None:
    return session.get(DatasetSnapshot, snapshot_id)


def latest_snapshot(*, session: Session) -> DatasetSnapshot | None:
    return session.exec(select(DatasetSnapshot).order_by(DatasetSnapshot.id.desc())).first()  # type: ignore[union-attr]


def list_snapshots(*, session: Session, limit: int = 20) -> list[DatasetSnapshot]:
    """The newest snapshots first."""
    stmt = select(DatasetSnapshot).order_by(DatasetSnapshot.id.desc()).limit(limit)  # type: ignore[union-attr]
    return list(session.exec(stmt).all())


def create_snapshot(
    *, session: Session, content_hash: str, path: str, counts: dict[str, Any], created_by: str = ""
) -> DatasetSnapshot | None:
    """Insert a snapshot row (its id numbers the folder). None when a snapshot with this content
    hash already exists — built concurrently; the unique constraint decides."""
    try:
        with session.begin_nested():
            snapshot = DatasetSnapshot(
                content_hash=content_hash, path=path, counts=counts, created_by=created_by
            )
            session.add(snapshot)
            session.flush()
    except IntegrityError:
        return None
    return snapshot


def set_snapshot_path(*, session: Session, snapshot: DatasetSnapshot, path: str) -> None:
    snapshot.path = path
    session.add(snapshot)
    session.flush()


def add_snapshot_examples(
    *, session: Session, snapshot_id: int, members: Iterable[tuple[int | None, str, int]]
) -> int:
    """Record which example sits in which split (and line) of a snapshot; returns the count."""
    rows = [
        {"snapshot_id": snapshot_id, "example_id": example_id, "split": split, "line": line}
        for example_id, split, line in members
    ]
    if rows:
        session.execute(insert(SnapshotExample), rows)
    return len(rows)


def snapshot_members(*, session: Session, snapshot_id: int) -> list[SnapshotExample]:
    stmt = (
        select(SnapshotExample)
        .where(SnapshotExample.snapshot_id == snapshot_id)
        .order_by(col(SnapshotExample.split), col(SnapshotExample.line))
    )
    return list(session.exec(stmt).all())


def existing_content_hashes(*, session: Session, hashes: Iterable[str]) -> set[str]:
    """Which of ``hashes`` some stored example (any status, any source) already has."""
    wanted = sorted(set(hashes))
    found: set[str] = set()
    for start in range(0, len(wanted), IN_CHUNK):
        chunk = wanted[start : start + IN_CHUNK]
        found.update(
            session.exec(
                select(Example.content_hash).where(col(Example.content_hash).in_(chunk))
            ).all()
        )
    return found


def insert_examples(*, session: Session, examples: Sequence[dict[str, Any]]) -> int:
    """Insert many examples at once, in the caller's transaction (an import is all or nothing).
    Each dict holds :class:`~storage.models.Example` fields."""
    if not examples:
        return 0
    now = utcnow()
    rows = [
        {
            "status": "active",
            "status_reason": "",
            "team_id": "",
            "answer_user": "",
            "redactions": {},
            "created_at": now,
            "updated_at": now,
            **example,
        }
        for example in examples
    ]
    session.execute(insert(Example), rows)
    return len(rows)
