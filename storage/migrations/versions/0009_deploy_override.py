"""deployment: a deploy past the evaluation gate records the verdict it overrode and the reason
(issue 15). Rows written before were never overrides.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 15:30:00.000000
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deployment', schema=None) as batch_op:
        batch_op.add_column(sa.Column('override_verdict',
                                      sqlmodel.sql.sqltypes.AutoString(length=16),
                                      nullable=False, server_default=''))
        batch_op.add_column(sa.Column('override_reason', sa.Text(), nullable=False,
                                      server_default=''))


def downgrade() -> None:
    with op.batch_alter_table('deployment', schema=None) as batch_op:
        batch_op.drop_column('override_reason')
        batch_op.drop_column('override_verdict')
