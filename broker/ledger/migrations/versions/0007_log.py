"""transparency log: tree head and nodes, checkpoints, the log key, witness push state; backfill existing events

Revision ID: 0007_log
Revises: 0006_deployment
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007_log'
down_revision = '0006_deployment'
branch_labels = None
depends_on = None

BATCH = 5000


def upgrade() -> None:
    # a ledger made by create_schema() before migrations already has these tables (see migrate.upgrade)
    existing = set(sa.inspect(op.get_bind()).get_table_names())

    def create(name: str, *columns: sa.SchemaItem) -> None:
        if name not in existing:
            op.create_table(name, *columns)

    create('log_head',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('frontier', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    create('log_nodes',
    sa.Column('level', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('idx', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('level', 'idx')
    )
    create('log_checkpoints',
    sa.Column('size', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('root', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('note', sa.Text(), nullable=False),
    sa.Column('cosignatures', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('size')
    )
    create('log_keys',
    sa.Column('kid', sa.String(length=300), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('retired_at', sa.Float(), nullable=True),
    sa.Column('kek_id', sa.String(length=32), nullable=False),
    sa.Column('sealed', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('kid')
    )
    create('log_witnesses',
    sa.Column('url', sa.String(length=512), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.Float(), nullable=False),
    sa.Column('last_status', sa.Integer(), nullable=True),
    sa.Column('last_error', sa.String(length=256), nullable=True),
    sa.PrimaryKeyConstraint('url')
    )
    _backfill()


def _backfill() -> None:
    """Existing events become the first leaves, in seq order, so the log covers the whole ledger."""
    from broker.ledger.chain import canonical  # the same leaf bytes the append hook uses
    from broker.transparency import tree

    bind = op.get_bind()
    head = sa.table("log_head", sa.column("id"), sa.column("size"), sa.column("frontier", sa.JSON))
    if bind.execute(sa.select(head.c.id)).first() is not None:
        return
    events = sa.table("audit_events", *(sa.column(c) for c in ("seq", "id", "ts", "kind", "subject", "boundary",
                                                               "task", "grant_id", "actor")), sa.column("detail", sa.JSON))
    nodes = sa.table("log_nodes", sa.column("level"), sa.column("idx"), sa.column("hash"))
    frontier, size = [], 0
    while True:
        rows = bind.execute(sa.select(events).where(events.c.seq > size).order_by(events.c.seq).limit(BATCH)).mappings().all()
        if not rows:
            break
        if rows[0]["seq"] != size + 1 or rows[-1]["seq"] != size + len(rows):
            raise RuntimeError(f"audit_events has a gap after seq {size}: run `broker audit verify` before upgrading")
        leaves = [tree.leaf_hash(canonical(dict(r))) for r in rows]
        frontier, size, new = tree.append(frontier, size, leaves)
        op.bulk_insert(nodes, [{"level": lv, "idx": ix, "hash": h.hex()} for lv, ix, h in new])
    op.bulk_insert(head, [{"id": 1, "size": size, "frontier": [h.hex() for h in frontier]}])


def downgrade() -> None:
    for name in ('log_witnesses', 'log_keys', 'log_checkpoints', 'log_nodes', 'log_head'):
        op.drop_table(name)
