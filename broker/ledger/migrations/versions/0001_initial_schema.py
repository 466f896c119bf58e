"""initial schema: grants, the audit chain and its head, operator tables, shared signing keys

Revision ID: 0001
Revises: 
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

GENESIS = "0" * 64  # the chain starts at the genesis hash (broker.ledger.chain)

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_events',
    sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('ts', sa.Float(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('subject', sa.String(length=512), nullable=True),
    sa.Column('boundary', sa.String(length=128), nullable=True),
    sa.Column('task', sa.String(length=128), nullable=True),
    sa.Column('grant_id', sa.String(length=64), nullable=True),
    sa.Column('actor', sa.String(length=512), nullable=True),
    sa.Column('detail', sa.JSON(), nullable=False),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('seq'),
    sa.UniqueConstraint('id')
    )
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.create_index('ix_audit_boundary_ts', ['boundary', 'ts'], unique=False)
        batch_op.create_index('ix_audit_grant', ['grant_id'], unique=False)
        batch_op.create_index('ix_audit_kind_ts', ['kind', 'ts'], unique=False)
        batch_op.create_index('ix_audit_subject_ts', ['subject', 'ts'], unique=False)
        batch_op.create_index('ix_audit_ts', ['ts'], unique=False)

    op.create_table('freezes',
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('value', sa.String(length=512), nullable=False),
    sa.Column('reason', sa.String(length=256), nullable=False),
    sa.Column('actor', sa.String(length=512), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('revocation_id', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('kind', 'value')
    )
    op.create_table('grants',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('subject', sa.String(length=512), nullable=False),
    sa.Column('attestor', sa.String(length=64), nullable=False),
    sa.Column('task', sa.String(length=128), nullable=False),
    sa.Column('boundary', sa.String(length=128), nullable=False),
    sa.Column('backend', sa.String(length=32), nullable=False),
    sa.Column('scopes', sa.String(length=512), nullable=False),
    sa.Column('handle', sa.String(length=256), nullable=False),
    sa.Column('fingerprint', sa.String(length=80), nullable=False),
    sa.Column('issued_at', sa.Float(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('cnf_jkt', sa.String(length=64), nullable=True),
    sa.Column('end_status', sa.String(length=16), nullable=True),
    sa.Column('end_reason', sa.String(length=256), nullable=True),
    sa.Column('end_actor', sa.String(length=512), nullable=True),
    sa.Column('ended_at', sa.Float(), nullable=True),
    sa.Column('revocation_id', sa.String(length=64), nullable=True),
    sa.Column('revoke_attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('grants', schema=None) as batch_op:
        batch_op.create_index('ix_grants_boundary', ['boundary'], unique=False)
        batch_op.create_index('ix_grants_revocation', ['revocation_id'], unique=False)
        batch_op.create_index('ix_grants_status_expires', ['status', 'expires_at'], unique=False)
        batch_op.create_index('ix_grants_status_next_attempt', ['status', 'next_attempt_at'], unique=False)
        batch_op.create_index('ix_grants_subject', ['subject'], unique=False)
        batch_op.create_index('ix_grants_task_subject', ['task', 'subject'], unique=False)

    op.create_table('ledger_head',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('revocations',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('selector', sa.JSON(), nullable=False),
    sa.Column('reason', sa.String(length=256), nullable=False),
    sa.Column('actor', sa.String(length=512), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('matched', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('signing_keys',
    sa.Column('kid', sa.String(length=64), nullable=False),
    sa.Column('alg', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('retired_at', sa.Float(), nullable=True),
    sa.Column('kek_id', sa.String(length=32), nullable=False),
    sa.Column('sealed', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('kid')
    )
    head = sa.table("ledger_head", sa.column("id", sa.Integer), sa.column("seq", sa.BigInteger), sa.column("hash", sa.String))
    op.bulk_insert(head, [{"id": 1, "seq": 0, "hash": GENESIS}])


def downgrade() -> None:
    op.drop_table('signing_keys')
    op.drop_table('revocations')
    op.drop_table('ledger_head')
    with op.batch_alter_table('grants', schema=None) as batch_op:
        batch_op.drop_index('ix_grants_task_subject')
        batch_op.drop_index('ix_grants_subject')
        batch_op.drop_index('ix_grants_status_next_attempt')
        batch_op.drop_index('ix_grants_status_expires')
        batch_op.drop_index('ix_grants_revocation')
        batch_op.drop_index('ix_grants_boundary')

    op.drop_table('grants')
    op.drop_table('freezes')
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_ts')
        batch_op.drop_index('ix_audit_subject_ts')
        batch_op.drop_index('ix_audit_kind_ts')
        batch_op.drop_index('ix_audit_grant')
        batch_op.drop_index('ix_audit_boundary_ts')

    op.drop_table('audit_events')
