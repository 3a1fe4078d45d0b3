"""job progress: its own columns instead of ``config["_progress"]`` (issue 12)

The worker used to keep a job's progress inside its training config; it now has two columns.
Rows written before keep their progress: the upgrade moves it out of the config, the downgrade
moves it back.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 03:10:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

# the job table as this migration sees it (not storage.models: that one moves on)
job = sa.table(
    'job',
    sa.column('id', sa.Integer()),
    sa.column('config', sa.JSON()),
    sa.column('progress_step', sa.Integer()),
    sa.column('progress_total_steps', sa.Integer()),
)


def upgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('progress_step', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('progress_total_steps', sa.Integer(), nullable=True))

    bind = op.get_bind()
    for job_id, config in bind.execute(sa.select(job.c.id, job.c.config)).all():
        if not isinstance(config, dict) or '_progress' not in config:
            continue
        progress = config.pop('_progress')
        progress = progress if isinstance(progress, dict) else {}
        bind.execute(job.update().where(job.c.id == job_id).values(
            config=config,
            progress_step=_whole(progress.get('step')),
            progress_total_steps=_whole(progress.get('total_steps')),
        ))


def downgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(job.c.id, job.c.config, job.c.progress_step, job.c.progress_total_steps)
        .where(sa.or_(job.c.progress_step.is_not(None), job.c.progress_total_steps.is_not(None)))
    ).all()
    for job_id, config, step, total in rows:
        config = {**(config or {}), '_progress': {'step': step, 'total_steps': total}}
        bind.execute(job.update().where(job.c.id == job_id).values(config=config))

    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_column('progress_total_steps')
        batch_op.drop_column('progress_step')


def _whole(value):
    """A stored step count as an int; anything else (absent, garbled) as unknown."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)
