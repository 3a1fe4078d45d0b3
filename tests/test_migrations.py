"""Alembic migrations are the schema: after upgrading, the tables match storage.models exactly."""

from datetime import UTC, datetime

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel, select

import storage.models  # noqa: F401
from storage.db import alembic_config, make_engine, session_scope
from storage.models import Job, StepProgress


def test_migrations_match_models(db_url):
    engine = make_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    engine.dispose()
    assert diff == [], f"models and migrations disagree: {diff}"


def test_downgrade_to_base_and_up_again(db_url):
    cfg = alembic_config(db_url)
    command.downgrade(cfg, "base")
    command.upgrade(cfg, "head")
    engine = make_engine(db_url)
    with engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() is not None
    engine.dispose()


def test_job_progress_written_into_the_config_before_0004_moves_to_its_columns_and_back(db_url):
    """Jobs from before 0004 kept their progress in ``config["_progress"]``: upgrading moves it
    to the job's progress columns (and out of the training config), downgrading moves it back."""
    import sqlalchemy as sa

    job = sa.table("job", sa.column("id", sa.Integer()), sa.column("state", sa.String()),
                   sa.column("method", sa.String()), sa.column("config", sa.JSON()),
                   sa.column("requested_by", sa.String()), sa.column("channel", sa.String()),
                   sa.column("status_ts", sa.String()), sa.column("run_dir", sa.Text()),
                   sa.column("attempts", sa.Integer()), sa.column("error", sa.Text()),
                   sa.column("created_at", sa.DateTime(timezone=True)))
    cfg = alembic_config(db_url)
    command.downgrade(cfg, "0003")
    engine = make_engine(db_url)
    blank = {"state": "succeeded", "method": "qlora", "requested_by": "", "channel": "",
             "status_ts": "", "run_dir": "", "attempts": 1, "error": "",
             "created_at": datetime(2026, 11, 30, tzinfo=UTC)}
    configs = {1: {"lora_r": 8, "_progress": {"step": 4, "total_steps": 6}},
               2: {"lora_r": 16},
               3: {"lora_r": 4, "_progress": {"step": 0, "total_steps": None}}}
    with engine.begin() as conn:
        conn.execute(job.insert(), [{"id": i, "config": c, **blank} for i, c in configs.items()])
    engine.dispose()

    command.upgrade(cfg, "0004")
    engine = make_engine(db_url)
    with session_scope(engine) as session:
        rows = {j.id: (j.config, j.progress) for j in session.exec(select(Job)).all()}
    engine.dispose()
    assert rows == {1: ({"lora_r": 8}, StepProgress(step=4, total_steps=6)),
                    2: ({"lora_r": 16}, StepProgress()),
                    3: ({"lora_r": 4}, StepProgress(step=0, total_steps=None))}

    command.downgrade(cfg, "0003")
    engine = make_engine(db_url)
    with engine.connect() as conn:
        back = dict(conn.execute(sa.select(job.c.id, job.c.config)).all())
    engine.dispose()
    assert back == configs
    command.upgrade(cfg, "head")
