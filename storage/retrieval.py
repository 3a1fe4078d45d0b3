"""Queries for the index of curated examples: stored vectors, and which channels are private."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from storage.models import ChannelVisibility, Example, RetrievalVector, utcnow

_CHUNK = 900  # ids per IN (...) list: well under SQLite's bound on query parameters


def _chunks(ids: Iterable[int]) -> Iterator[list[int]]:
    ids = list(ids)
    for i in range(0, len(ids), _CHUNK):
        yield ids[i:i + _CHUNK]


def curation_fingerprint(*, session: Session) -> tuple[Any, ...]:
    """A value that changes whenever the current examples or the channels' visibility change: an
    example curated, edited (``updated_at`` moves), withdrawn, deleted, excluded or re-activated,
    or a channel's visibility recorded. One row to read, so the index can poll it every few
    seconds."""
    examples = session.exec(
        select(func.count(), func.coalesce(func.sum(Example.id), 0), func.max(Example.id),
               func.max(Example.updated_at))
        .where(Example.status == "active")
    ).one()
    # record_channel writes only on a change, and then moves checked_at
    channels = session.exec(select(func.count(), func.max(ChannelVisibility.checked_at))).one()
    return (*tuple(examples), *tuple(channels))


def current_versions(*, session: Session) -> dict[int, datetime]:
    """``updated_at`` of every current (active) example, by id."""
    rows = session.exec(select(Example.id, Example.updated_at).where(Example.status == "active"))
    versions: dict[int, datetime] = {}
    for example_id, updated in rows:
        assert example_id is not None  # read from a stored row
        versions[example_id] = updated
    return versions


def example_texts(*, session: Session, ids: Iterable[int]) -> list[Any]:
    """Rows of (``id``, ``channel``, ``thread_ts``, ``source``, ``messages``) — what the index
    needs, without loading whole examples (a restart reads every one of them)."""
    found: list[Any] = []
    for chunk in _chunks(ids):
        # sqlmodel's select() is typed for at most four columns; these are five
        found.extend(session.exec(
            select(  # type: ignore[call-overload]
                Example.id, Example.channel, Example.thread_ts, Example.source, Example.messages
            ).where(col(Example.id).in_(chunk))
        ).all())
    return found


def vectors_for(*, session: Session, ids: Iterable[int]) -> dict[int, Any]:
    """Stored vectors by example id: rows of (``example_id``, ``model``, ``dimension``,
    ``text_hash``, ``vector``)."""
    found: dict[int, Any] = {}
    for chunk in _chunks(ids):
        # sqlmodel's select() is typed for at most four columns; these are five
        stmt = select(  # type: ignore[call-overload]
            RetrievalVector.example_id, RetrievalVector.model, RetrievalVector.dimension,
            RetrievalVector.text_hash, RetrievalVector.vector,
        ).where(col(RetrievalVector.example_id).in_(chunk))
        found.update((row.example_id, row) for row in session.exec(stmt))
    return found


def save_vectors(*, session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert or replace vectors (``example_id``, ``model``, ``dimension``, ``text_hash``,
    ``vector``). Two processes indexing the same example at once both succeed; the last wins."""
    if not rows:
        return
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    now = utcnow()
    for start in range(0, len(rows), 500):
        values = [{**row, "indexed_at": now} for row in rows[start:start + 500]]
        stmt = insert(RetrievalVector).values(values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["example_id"],
            set_={name: stmt.excluded[name]
                  for name in ("model", "dimension", "text_hash", "vector", "indexed_at")},
        )
        session.exec(stmt)


def drop_stale_vectors(*, session: Session) -> int:
    """Delete the vectors of examples that are no longer current (withdrawn); deleted examples'
    vectors go with them (foreign key, on delete cascade). Returns how many went."""
    stale = select(Example.id).where(Example.status != "active")
    result = session.exec(delete(RetrievalVector).where(RetrievalVector.example_id.in_(stale)))  # type: ignore[attr-defined]
    return int(result.rowcount or 0)


def drop_all_vectors(*, session: Session) -> int:
    result = session.exec(delete(RetrievalVector))
    return int(result.rowcount or 0)


def record_channel(*, session: Session, channel: str, private: bool) -> None:
    """Remember whether ``channel`` is private (the bot calls this when it curates from it)."""
    row = session.get(ChannelVisibility, channel)
    if row is not None and row.private == private:
        return
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = insert(ChannelVisibility).values(channel=channel, private=private, checked_at=utcnow())
    session.exec(stmt.on_conflict_do_update(
        index_elements=["channel"],
        set_={"private": stmt.excluded.private, "checked_at": stmt.excluded.checked_at},
    ))


def channel_visibility(*, session: Session) -> dict[str, bool]:
    """Every channel whose visibility is known: channel id → private."""
    return {row.channel: row.private for row in session.exec(select(ChannelVisibility))}


def stored_summary(*, session: Session) -> dict[str, Any]:
    """What the vector table holds: rows by (model, dimension), the newest write, and how many
    current examples have no vector yet."""
    by_model = session.exec(
        select(RetrievalVector.model, RetrievalVector.dimension, func.count())
        .group_by(col(RetrievalVector.model), col(RetrievalVector.dimension))
    ).all()
    last = session.exec(
        select(RetrievalVector.indexed_at).order_by(RetrievalVector.indexed_at.desc()).limit(1)  # type: ignore[attr-defined]
    ).first()
    current = session.exec(
        select(func.count()).select_from(Example).where(Example.status == "active")
    ).one()
    missing = session.exec(
        select(func.count())
        .select_from(Example)
        .outerjoin(RetrievalVector, RetrievalVector.example_id == Example.id)  # type: ignore[arg-type]
        .where(Example.status == "active", col(RetrievalVector.example_id).is_(None))
    ).one()
    return {
        "vectors": {(model, dimension): int(n) for model, dimension, n in by_model},
        "last_indexed": last,
        "current_examples": int(current),
        "missing": int(missing),
    }
