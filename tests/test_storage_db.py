"""storage.db.make_engine: SQLite in WAL mode with foreign keys on; foreign keys enforced on both
databases."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from storage.db import make_engine


def test_sqlite_connections_use_wal_and_foreign_keys(tmp_path):
    path = tmp_path / "nested" / "threadtune.db"
    url = f"sqlite:///{path}"
    engine = make_engine(url)  # creates the missing folder
    try:
        # Two connections held at once: the pragmas are set on every new connection, not once.
        with engine.connect() as first, engine.connect() as second:
            for conn in (first, second):
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
                assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    finally:
        engine.dispose()
    # WAL is a property of the file (it stays after the engine is gone); foreign keys are per
    # connection, which is why make_engine sets them on each one.
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA foreign_keys").fetchone()[0] == 0


def test_a_row_violating_a_foreign_key_is_refused(db_url):
    engine = make_engine(db_url)
    try:
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text("INSERT INTO example_curator (example_id, user_id, created_at) "
                              "VALUES (424242, 'UCUR1', CURRENT_TIMESTAMP)"))
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM example_curator")).scalar() == 0
    finally:
        engine.dispose()


def test_deleting_an_example_cascades_to_its_curators(db_url):
    """ON DELETE CASCADE only works on SQLite when foreign keys are on."""
    from storage import curation as q
    from storage.db import session_scope

    engine = make_engine(db_url)
    try:
        fields = dict(
            channel="C1",
            thread_ts="100.0",
            message_ts="101.0",
            answer_user="U9",
            messages=[
                {"role": "user", "content": "q?"},
                {"role": "assistant", "content": "an answer"},
            ],
            redactions={},
            content_hash="h1",
        )
        with session_scope(engine) as s:
            example, _ = q.save_example(session=s, fields=fields, curator="UCUR1")
            q.add_curator(session=s, example_id=example.id, user_id="UCUR2")
        with engine.begin() as conn:  # plain SQL, so the database (not the ORM) does the cascade
            conn.execute(text("DELETE FROM example WHERE id = :id"), {"id": example.id})
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM example_curator")).scalar() == 0
    finally:
        engine.dispose()


class Killed(BaseException):
    """Stands for the process dying in the middle of a unit of work (nothing after it runs)."""


def test_a_nested_write_commits_with_its_unit_of_work_or_not_at_all(db_url):
    """The first write of a unit of work inside a nested block (a claimed event id, a new
    example) must not be committed on its own: on SQLite, Python's driver once let the
    SAVEPOINT's RELEASE commit it, so a process killed before the end of the unit of work left
    the event claimed and its curation never applied, or an example without its progress row."""
    from storage import curation as q
    from storage.db import session_scope

    engine = make_engine(db_url)
    fields = dict(
        channel="C1", thread_ts="100.0", message_ts="101.0", answer_user="U9",
        messages=[{"role": "user", "content": "q?"}, {"role": "assistant", "content": "a"}],
        redactions={}, content_hash="h1",
    )  # fmt: skip
    try:
        with pytest.raises(Killed), session_scope(engine) as s:
            assert q.claim_event(session=s, event_id="Ev1", kind="reaction_added")
            q.save_example(session=s, fields=fields, curator="UCUR1")
            raise Killed
        with engine.connect() as conn:
            for table in ("processed_event", "example", "example_curator"):
                assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() == 0, table
        # and a unit of work that ends commits all of it
        with session_scope(engine) as s:
            assert q.claim_event(session=s, event_id="Ev1", kind="reaction_added")
            q.save_example(session=s, fields=fields, curator="UCUR1")
        with session_scope(engine) as s:
            assert not q.claim_event(session=s, event_id="Ev1", kind="reaction_added")
            assert q.get_example(session=s, channel="C1", message_ts="101.0") is not None
    finally:
        engine.dispose()
