"""grants.parent_grant_id: the grant a delegated or transaction token was derived from (it ends with it)

Revision ID: 0012_delegation
Revises: 0011_provenance
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_delegation"
down_revision = "0011_provenance"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable, no default: grants issued before this revision were derived from nothing
    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parent_grant_id", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_grants_parent", ["parent_grant_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.drop_index("ix_grants_parent")
        batch_op.drop_column("parent_grant_id")
