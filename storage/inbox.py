"""Queries for the durable inbox (Slack requests written before their ack, done after their
listener). The ack path calls :func:`receive` on a plain connection: one INSERT, no ORM session.

Where the rows live (:func:`inbox_engine`): on SQLite, a file of their own beside the database
(``threadtune-inbox.db`` next to ``threadtune.db``), so the write before the ack never waits for the
main database's write lock, which curation, indexing and jobs hold in turn. Both files use WAL with
``synchronous=NORMAL``: a commit is in the WAL once ``write()`` returns, in the operating system's
cache, so it survives the process being killed (``kill -9``, a crash, the OOM killer) though not a
power loss or kernel crash, which only ``synchronous=FULL`` (an fsync per commit) would. On
PostgreSQL the inbox stays in the main database: writers there lock rows, not the database."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Connection, CursorResult, Engine, bindparam, delete, func, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col, select

from storage.db import make_engine
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
    finish_many(session=session, done=[(key, error)])


def finish_many(*, session: Executor, done: list[tuple[str, str]]) -> None:
    """Mark several requests done at once: ``done`` is ``(key, error)`` pairs (one statement,
    executed for each)."""
    if not done:
        return
    table = InboxItem.__table__  # type: ignore[attr-defined]
    stmt = (
        update(table)
        .where(table.c.key == bindparam("k"), table.c.done_at.is_(None))
        .values(done_at=bindparam("at"), error=bindparam("err"), body="")
    )
    now = utcnow()
    session.execute(stmt, [{"k": key, "at": now, "err": error[:2000]} for key, error in done])


def pending_body(*, session: Executor, key: str) -> str | None:
    """The sealed payload of ``key`` while it is not done; None once done (or not there)."""
    table = InboxItem.__table__  # type: ignore[attr-defined]
    stmt = select(table.c.body).where(table.c.key == key, table.c.done_at.is_(None))
    return session.execute(stmt).scalar_one_or_none()


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


def inbox_engine(db: Engine) -> Engine:
    """The engine the inbox's rows live in: on a SQLite file, a file of its own beside it (its
    table created if missing; the main database's ``inbox`` table is then unused, see
    :func:`adopt`); anything else, ``db`` itself."""
    url = db.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return db
    path = Path(url.database)
    own = url.set(database=str(path.with_name(f"{path.stem}-inbox{path.suffix or '.db'}")))
    engine = make_engine(own.render_as_string(hide_password=False))
    InboxItem.__table__.create(engine, checkfirst=True)  # type: ignore[attr-defined]
    return engine


def adopt(*, source: Engine, target: Engine) -> int:
    """Move the rows of ``source``'s inbox table (where the inbox lived before it had its own file)
    into ``target``'s, so a request an earlier version acknowledged is still replayed and a retry
    still recognised; returns how many rows moved."""
    table = InboxItem.__table__  # type: ignore[attr-defined]
    with source.begin() as src:
        rows: list[dict[str, Any]] = [dict(r._mapping) for r in src.execute(table.select())]
        if not rows:
            return 0
        with target.begin() as dst:
            dst.execute(sqlite_insert(table).on_conflict_do_nothing(), rows)
        src.execute(delete(table))
    return len(rows)
