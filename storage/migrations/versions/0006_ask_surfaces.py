"""ask log: where a question was asked, whether the bot abstained, what it cited, how much of the
answer was redacted, and who answered it later from the Unanswered list (issues 13, 15)

Rows written before were all ``/ask`` answers of the closed-book model: surface ``slash``, not
abstained, no sources.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 06:45:00.000000
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('ask_log', schema=None) as batch_op:
        batch_op.add_column(sa.Column('surface', sqlmodel.sql.sqltypes.AutoString(length=16),
                                      nullable=False, server_default='slash'))
        batch_op.add_column(sa.Column('thread_ts', sqlmodel.sql.sqltypes.AutoString(length=32),
                                      nullable=False, server_default=''))
        batch_op.add_column(sa.Column('abstained', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
        batch_op.add_column(sa.Column('redacted', sa.Integer(), nullable=False,
                                      server_default='0'))
        batch_op.add_column(sa.Column('sources', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('resolved_example_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('resolved_by', sqlmodel.sql.sqltypes.AutoString(length=32),
                                      nullable=False, server_default=''))
        batch_op.add_column(sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_ask_log_abstained', ['abstained'])
        batch_op.create_foreign_key('fk_ask_log_resolved_example', 'example',
                                    ['resolved_example_id'], ['id'], ondelete='SET NULL')


def downgrade() -> None:
    with op.batch_alter_table('ask_log', schema=None) as batch_op:
        batch_op.drop_constraint('fk_ask_log_resolved_example', type_='foreignkey')
        batch_op.drop_index('ix_ask_log_abstained')
        batch_op.drop_column('resolved_at')
        batch_op.drop_column('resolved_by')
        batch_op.drop_column('resolved_example_id')
        batch_op.drop_column('sources')
        batch_op.drop_column('redacted')
        batch_op.drop_column('abstained')
        batch_op.drop_column('thread_ts')
        batch_op.drop_column('surface')
