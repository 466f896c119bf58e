"""Schema migrations (Alembic, run in-process): the same schema on PostgreSQL and SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

from broker.ledger.models import Base

SCRIPTS = Path(__file__).with_name("migrations")
INITIAL = "0001"
# any constant shared by every replica: replicas starting together migrate one at a time
_ADVISORY_LOCK = 0x62726F6B  # "brok"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at the package's scripts; no alembic.ini needed."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPTS))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Bring the schema to `revision`; safe to call from several replicas at once. Returns the new revision."""
    with _migration_lock(engine) as connection:
        config = alembic_config(connection)
        if _unversioned_legacy(connection):
            command.stamp(config, INITIAL)  # created by create_schema() before migrations existed
        command.upgrade(config, revision)
        connection.commit()
        return current(connection)


def current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def head() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def differences(engine: Engine) -> list[Any]:
    """What the models declare and the migrated database lacks (or has extra); empty when in step."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


def revision(engine: Engine, message: str) -> None:
    """Autogenerate a new migration from the models against a database at head (for developers)."""
    with engine.connect() as connection:
        command.revision(alembic_config(connection), message=message, autogenerate=True)


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as connection:
        if engine.dialect.name != "postgresql":
            yield connection  # SQLite: the write lock (BEGIN IMMEDIATE) serialises writers
            return
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _ADVISORY_LOCK})
        connection.commit()
        try:
            yield connection
        finally:
            connection.rollback()
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _ADVISORY_LOCK})
            connection.commit()


def _unversioned_legacy(connection: Connection) -> bool:
    tables = set(inspect(connection).get_table_names())
    return "ledger_head" in tables and "alembic_version" not in tables
