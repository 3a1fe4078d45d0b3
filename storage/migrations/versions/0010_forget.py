"""forget: examples record who asked, snapshots record how many lines forgetting removed from them, models when content they
were trained on was forgotten (issue 15)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 15:30:00.000000
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('example', schema=None) as batch_op:
        batch_op.add_column(sa.Column('question_user', sqlmodel.sql.sqltypes.AutoString(length=32),
                                      nullable=False, server_default=''))
    with op.batch_alter_table('dataset_snapshot', schema=None) as batch_op:
        batch_op.add_column(sa.Column('forgotten_lines', sa.Integer(), nullable=False,
                                      server_default='0'))
    with op.batch_alter_table('model', schema=None) as batch_op:
        batch_op.add_column(sa.Column('content_forgotten_at', sa.DateTime(timezone=True),
                                      nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('model', schema=None) as batch_op:
        batch_op.drop_column('content_forgotten_at')
    with op.batch_alter_table('dataset_snapshot', schema=None) as batch_op:
        batch_op.drop_column('forgotten_lines')
    with op.batch_alter_table('example', schema=None) as batch_op:
        batch_op.drop_column('question_user')
