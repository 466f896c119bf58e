"""abuse limits: aggregated refusals of unverified identity tokens, and an index for per-subject counts

Revision ID: 0005_limits
Revises: 0004_dpop_replay
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005_limits'
down_revision = '0004_dpop_replay'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('denial_windows',
    sa.Column('window_start', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('token_fp', sa.String(length=80), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('first_at', sa.Float(), nullable=False),
    sa.Column('last_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('window_start', 'token_fp')
    )
    with op.batch_alter_table('grants', schema=None) as batch_op:
        batch_op.create_index('ix_grants_subject_boundary_issued', ['subject', 'boundary', 'issued_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('grants', schema=None) as batch_op:
        batch_op.drop_index('ix_grants_subject_boundary_issued')
    op.drop_table('denial_windows')
