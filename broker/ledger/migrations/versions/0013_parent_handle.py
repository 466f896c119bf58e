"""grants.parent_handle: the backend credential a grant's credential hangs off (a Vault parent token)

Revision ID: 0013_parent_handle
Revises: 0012_delegation
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_parent_handle"
down_revision = "0012_delegation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable, no default: credentials minted before this revision hang off nothing (revoked one by one)
    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parent_handle", sa.String(length=256), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.drop_column("parent_handle")
