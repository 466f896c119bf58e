"""signal_streams and signal_outbox: Shared Signals streams and their SETs waiting for delivery

Revision ID: 0009_signals
Revises: 0007_log
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009_signals'
down_revision = '0007_log'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('signal_streams',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('owner', sa.String(length=512), nullable=False),
    sa.Column('owner_attestor', sa.String(length=64), nullable=False),
    sa.Column('audience', sa.String(length=512), nullable=False),
    sa.Column('boundaries', sa.JSON(), nullable=False),
    sa.Column('events_requested', sa.JSON(), nullable=False),
    sa.Column('method', sa.String(length=32), nullable=False),
    sa.Column('endpoint_url', sa.String(length=1024), nullable=True),
    sa.Column('description', sa.String(length=256), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('status_reason', sa.String(length=256), nullable=True),
    sa.Column('next_seq', sa.BigInteger(), nullable=False),
    sa.Column('sent', sa.BigInteger(), nullable=False),
    sa.Column('failed', sa.BigInteger(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.Float(), nullable=False),
    sa.Column('lease_until', sa.Float(), nullable=False),
    sa.Column('last_error', sa.String(length=200), nullable=True),
    sa.Column('last_sent_at', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('audience')
    )
    op.create_index('ix_signal_streams_owner', 'signal_streams', ['owner'], unique=False)
    op.create_table('signal_outbox',
    sa.Column('stream_id', sa.String(length=64), nullable=False),
    sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('jti', sa.String(length=64), nullable=False),
    sa.Column('claims', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('stream_id', 'seq')
    )
    op.create_index('ix_signal_outbox_jti', 'signal_outbox', ['stream_id', 'jti'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_signal_outbox_jti', table_name='signal_outbox')
    op.drop_table('signal_outbox')
    op.drop_index('ix_signal_streams_owner', table_name='signal_streams')
    op.drop_table('signal_streams')
