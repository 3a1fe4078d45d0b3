"""Queries for the durable inbox (Slack requests written before their ack, done after their
listener). The ack path calls :func:`receive` on a plain
connection: one INSERT, no ORM session."""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import Connection, CursorResult, delete, func, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col, select

from storage.models import InboxItem, utcnow

Executor = Session | Connection


def dialect_insert(session: Executor):  # noqa: ANN202 - a dialect's Insert
    dialect = session.get_bind().dialect.name if isinstance(session, Session) else (
        session.dialect.name
    )
    return pg_insert if dialect == "postgresql" else sqlite_insert


def receive(*, session: Executor, key: str, kind: str, body: str) -> bool:
    """Write a request before it is acknowledged; False when ``key`` is there already (a retry,
    or a duplicate delivery): the caller acknowledges it and applies nothing."""
    stmt = (
        dialect_insert(session)(InboxItem.__table__)  # type: ignore[attr-defined]
        .values(key=key, kind=kind, body=body, attempts=0, error="", received_at=utcnow())
        .on_conflict_do_nothing(index_elements=["key"])
        .returning(InboxItem.__table__.c.key)  # type: ignore[attr-defined]
    )
    return session.execute(stmt).first() is not None


def finish(*, session: Executor, key: str, error: str = "") -> None:
    """Mark a request done (its listener returned, or raised: ``error`` says why); its payload is
    no longer needed and is blanked."""
    session.execute(
        update(InboxItem)
        .where(col(InboxItem.key) == key, col(InboxItem.done_at).is_(None))
        .values(done_at=utcnow(), error=error[:2000], body="")
    )


def unfinished(*, session: Session) -> list[InboxItem]:
    """Requests acknowledged but not done, oldest first (what a crashed process left)."""
    stmt = (
        select(InboxItem)
        .where(col(InboxItem.done_at).is_(None))
        .order_by(col(InboxItem.received_at), col(InboxItem.key))
    )
    return list(session.exec(stmt).all())


def start_attempt(*, session: Session, key: str) -> int:
    """Count one more replay of ``key``; returns the attempts so far, this one included."""
    session.execute(
        update(InboxItem).where(col(InboxItem.key) == key).values(attempts=InboxItem.attempts + 1)
    )
    return int(session.exec(select(InboxItem.attempts).where(InboxItem.key == key)).one())


def prune(*, session: Session, before: datetime) -> int:
    """Delete requests done before ``before``; returns how many. Unfinished ones are kept."""
    result = cast(CursorResult, session.execute(
        delete(InboxItem).where(
            col(InboxItem.done_at).is_not(None), col(InboxItem.done_at) < before
        )
    ))
    return int(result.rowcount or 0)


def counts(*, session: Session) -> dict[str, int]:
    """``{"done": n, "pending": n}``, for tests and logs."""
    done = session.exec(
        select(func.count()).select_from(InboxItem).where(col(InboxItem.done_at).is_not(None))
    ).one()
    total = session.exec(select(func.count()).select_from(InboxItem)).one()
    return {"done": int(done), "pending": int(total - done)}
