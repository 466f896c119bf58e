"""grants.cnf_x5t: the client certificate (RFC 8705 x5t#S256) a grant issued over mutual TLS is bound to

Revision ID: 0010_x5t
Revises: 0009_signals
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010_x5t'
down_revision = '0009_signals'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable, no default: adding it rewrites no row and takes no long lock (other replicas keep serving)
    with op.batch_alter_table('grants') as batch:
        batch.add_column(sa.Column('cnf_x5t', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('grants') as batch:
        batch.drop_column('cnf_x5t')
