"""broker_settings: facts shared by every replica, first the deployment id

Revision ID: 0003_deployment
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003_deployment'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table('broker_settings'):
        return  # a ledger made by create_schema() from today's models before it was versioned
    op.create_table('broker_settings',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('value', sa.String(length=256), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )


def downgrade() -> None:
    op.drop_table('broker_settings')
