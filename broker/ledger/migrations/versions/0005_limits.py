"""abuse limits: aggregated refusals of unverified identity tokens, and an index for per-subject counts

Revision ID: 0005_limits
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005_limits'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a ledger made by create_schema() before migrations existed is stamped 0001 but has every table
    inspector = sa.inspect(op.get_bind())
    if 'denial_windows' not in inspector.get_table_names():
        _create_denial_windows()
    if 'ix_grants_subject_boundary_issued' not in {ix['name'] for ix in inspector.get_indexes('grants')}:
        with op.batch_alter_table('grants', schema=None) as batch_op:
            batch_op.create_index('ix_grants_subject_boundary_issued', ['subject', 'boundary', 'issued_at'], unique=False)


def _create_denial_windows() -> None:
    op.create_table('denial_windows',
    sa.Column('window_start', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('token_fp', sa.String(length=80), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('first_at', sa.Float(), nullable=False),
    sa.Column('last_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('window_start', 'token_fp')
    )


def downgrade() -> None:
    with op.batch_alter_table('grants', schema=None) as batch_op:
        batch_op.drop_index('ix_grants_subject_boundary_issued')
    op.drop_table('denial_windows')
