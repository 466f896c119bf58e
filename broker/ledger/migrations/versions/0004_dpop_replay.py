"""dpop_replay: DPoP proofs seen by any worker or replica (hash of key thumbprint and jti, expiry)

Revision ID: 0004_dpop_replay
Revises: 0002_idempotency
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004_dpop_replay'
down_revision = '0002_idempotency'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('dpop_replay',
    sa.Column('jti_hash', sa.String(length=64), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('jti_hash')
    )
    with op.batch_alter_table('dpop_replay', schema=None) as batch_op:
        batch_op.create_index('ix_dpop_replay_expires', ['expires_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('dpop_replay', schema=None) as batch_op:
        batch_op.drop_index('ix_dpop_replay_expires')
    op.drop_table('dpop_replay')
