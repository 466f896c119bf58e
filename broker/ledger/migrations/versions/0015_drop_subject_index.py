"""drop grants(subject): every lookup by subject is a prefix of grants(subject, boundary, issued_at)

The one-column index duplicated the first column of the abuse limits' two indexes (0014), and each
commit of new grants rewrote its pages too: 4 of the 58 WAL frames of a ledger writer's batch of 6
grants on one subject (bench/README.md, eighth pass).

Revision ID: 0015_drop_subject_index
Revises: 0014_limits_index
"""

from __future__ import annotations

from alembic import op

revision = "0015_drop_subject_index"
down_revision = "0014_limits_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_grants_subject", table_name="grants")


def downgrade() -> None:
    op.create_index("ix_grants_subject", "grants", ["subject"])
