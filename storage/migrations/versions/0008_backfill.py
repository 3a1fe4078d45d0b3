"""backfill from channel history: progress per channel, so a killed run resumes (issue 14)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 15:30:00.000000
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('backfill_progress',
    sa.Column('channel', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('oldest', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('cursor', sa.Text(), nullable=False),
    sa.Column('page_done_ts', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('counts', sa.JSON(), nullable=False),
    sa.Column('requested_by', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('report_channel', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('report_ts', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('lease_owner', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('channel')
    )


def downgrade() -> None:
    op.drop_table('backfill_progress')
