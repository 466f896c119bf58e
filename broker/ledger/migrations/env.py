"""Alembic environment: runs on the connection `broker.ledger.migrate` hands in (no alembic.ini)."""

from __future__ import annotations

from alembic import context

from broker.ledger.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `broker db upgrade` (broker.ledger.migrate), not the alembic CLI")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    compare_type=True,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copy
)
with context.begin_transaction():
    context.run_migrations()
