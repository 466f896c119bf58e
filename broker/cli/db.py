"""`broker db`: the ledger database schema (Alembic migrations)."""

from __future__ import annotations

import typer

from broker.cli.options import ConfigOpt, DataDirOpt, DbOpt, settings_or_exit

group = typer.Typer(help="The ledger database schema (Alembic migrations).", no_args_is_help=True)


@group.command("upgrade")
def db_upgrade(config: ConfigOpt = None, data_dir: DataDirOpt = None, database_url: DbOpt = None) -> None:
    """Migrate the ledger schema to the newest revision (safe while other replicas run or start)."""
    from broker.ledger import make_engine, migrate

    settings = settings_or_exit(config, data_dir, database_url)
    if settings.database.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    revision = migrate.upgrade(make_engine(settings.database, pool=settings.db_pool))
    typer.echo(f"schema at revision {revision} (head {migrate.head()})")


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="db")
