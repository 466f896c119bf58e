"""grants: provenance, the policy revision and the rule that allowed each grant

Revision ID: 0011_provenance
Revises: 0010_x5t
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0011_provenance'
down_revision = '0010_x5t'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable: grants issued before this revision have no recorded provenance
    with op.batch_alter_table('grants', schema=None) as batch_op:
        batch_op.add_column(sa.Column('policy_revision', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('rule', sa.String(length=128), nullable=True))
        batch_op.create_index('ix_grants_rule_status', ['rule', 'status'], unique=False)
        batch_op.create_index('ix_grants_policy_revision_status', ['policy_revision', 'status'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('grants', schema=None) as batch_op:
        batch_op.drop_index('ix_grants_policy_revision_status')
        batch_op.drop_index('ix_grants_rule_status')
        batch_op.drop_column('rule')
        batch_op.drop_column('policy_revision')
