"""Database engine and sessions. SQLite (WAL, foreign keys on) or PostgreSQL, chosen by URL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, create_engine

MIGRATIONS = Path(__file__).parent / "migrations"


def normalise_url(url: str) -> str:
    """Accept the usual PostgreSQL spellings and route them to psycopg 3."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def make_engine(url: str) -> Engine:
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # noqa: ANN001
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "savepoint")
        def _begin_before_savepoint(conn, _name):  # noqa: ANN001
            # Python's sqlite3 (before 3.12's autocommit=False) begins a transaction only before
            # an INSERT, UPDATE or DELETE. A SAVEPOINT issued first then opens a transaction of
            # its own, and its RELEASE commits it: the example or the claimed event id written in
            # a nested block would be committed at once, not with the rest of the unit of work,
            # and a process killed in between would leave half of it. Begin first, as
            # PostgreSQL always has.
            dbapi = conn.connection.dbapi_connection
            if not dbapi.in_transaction:
                dbapi.execute("BEGIN")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema up to date (``threadtune db upgrade``; also run at every start)."""
    command.upgrade(alembic_config(url), revision)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One session per unit of work: commit on success, roll back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
