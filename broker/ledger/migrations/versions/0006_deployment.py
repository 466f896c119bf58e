"""broker_settings: facts shared by every replica, first the deployment id

Revision ID: 0006_deployment
Revises: 0005_limits
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006_deployment'
down_revision = '0005_limits'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('broker_settings',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('value', sa.String(length=256), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )


def downgrade() -> None:
    op.drop_table('broker_settings')
