"""The `broker` command: serve, dev, dev-token, keys, audit."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from broker import cli_mcp, cli_operator
from broker.config import Settings, load_settings
from broker.errors import BrokerError, ConfigError

app = typer.Typer(help="Short-lived credential broker.", no_args_is_help=True, pretty_exceptions_enable=False)
keys_app = typer.Typer(help="Signing keys.", no_args_is_help=True)
audit_app = typer.Typer(help="The tamper-evident ledger.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")
db_app = typer.Typer(help="The ledger database schema (Alembic migrations).", no_args_is_help=True)
app.add_typer(db_app, name="db")
vault_app = typer.Typer(help="The Vault/OpenBao objects a config needs.", no_args_is_help=True)
app.add_typer(vault_app, name="vault")

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file (or BROKER_CONFIG).")]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="Data directory (keys, SQLite ledger).")]
DbOpt = Annotated[Optional[str], typer.Option("--database-url", help="SQLAlchemy URL of the ledger.")]


def _settings(config: Path | None, data_dir: Path | None = None, database_url: str | None = None) -> Settings:
    overrides = {k: v for k, v in {"data_dir": data_dir, "database_url": database_url}.items() if v is not None}
    try:
        return load_settings(config, **overrides)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8080,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    keep_alive: Annotated[int, typer.Option(help="Seconds an idle HTTP connection stays open.")] = 75,
) -> None:
    """Run the broker with a config file (production)."""
    import uvicorn

    settings = _settings(config)  # validate before forking workers: errors name file and field
    if settings.config:
        os.environ["BROKER_CONFIG"] = str(settings.config)
    uvicorn.run(
        "broker.app:app_from_env", factory=True, host=host, port=port, workers=workers, log_level=log_level,
        access_log=False, proxy_headers=False,
        # longer than clients' and load balancers' idle timeouts (httpx: 5 s), so a client never
        # reuses a connection the server is closing at that instant ("server disconnected")
        timeout_keep_alive=keep_alive,
    )


@app.command()
def dev(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8080,
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Where dev keys and the ledger live.")] = Path(".broker"),
    postgres_url: Annotated[str, typer.Option("--postgres-url", help="PostgreSQL of the demo-db boundary.")] = (
        "postgresql://postgres@127.0.0.1:5432/test"
    ),
    vault: Annotated[bool, typer.Option("--vault/--no-vault", help="Start OpenBao (demo-kv, demo-db).")] = True,
) -> None:
    """Run the broker on 127.0.0.1 with a demo config, a dev identity issuer and an OpenBao dev server."""
    import uvicorn

    from broker.app import create_app
    from broker.dev import dev_token

    server = None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # uvicorn re-raises SIGTERM; unwind to stop OpenBao
    try:
        server, settings = _dev_vault_settings(data_dir, port, postgres_url if vault else None, vault)
        typer.echo(_dev_banner(settings, dev_token(settings.data_dir, "dev:demo-workload")))
        uvicorn.run(create_app(settings), host="127.0.0.1", port=port, log_level="warning", timeout_keep_alive=75)
    except BrokerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        if server:
            server.stop()


def _dev_vault_settings(data_dir: Path, port: int, postgres_url: str | None, vault: bool):  # noqa: ANN202
    """Start OpenBao (when wanted), build the dev settings, apply the Vault plan; (server or None, settings)."""
    from broker.dev import ROOT_TOKEN_FILE, dev_settings, prepare_dev_vault, start_dev_vault

    if not vault:
        return None, dev_settings(data_dir, port)
    server, parts = start_dev_vault(data_dir.resolve(), postgres_url)
    try:
        settings = dev_settings(data_dir, port, **parts)
        prepare_dev_vault(settings, postgres_url)
    except BrokerError:
        server.stop()
        raise
    names = ", ".join(b["name"] for b in parts["extra_boundaries"])
    token_file = data_dir.resolve() / ROOT_TOKEN_FILE
    typer.echo(f"  openbao:  {server.addr}  root token in {token_file} (0600, dev only)  boundaries: {names}")
    return server, settings


def _dev_banner(settings: Settings, token: str) -> str:
    url = settings.issuer
    return f"""
  DEV MODE: local development identity issuer, demo config. Never use in production.
  broker:   {url}     data: {settings.data_dir}
  Try it (another terminal):
    export ID_TOKEN=$(broker dev-token --subject dev:demo-workload --data-dir {settings.data_dir})
    curl -s -X POST {url}/v1/grants -H "Authorization: Bearer $ID_TOKEN" \\
         -H 'Content-Type: application/json' -d '{{"task":"hello","boundary":"demo","scopes":["read"],"ttl":300}}'
"""


@app.command("dev-token")
def dev_token_cmd(
    subject: Annotated[str, typer.Option(help="Subject, e.g. dev:demo-workload or dev:operator.")],
    data_dir: Annotated[Path, typer.Option("--data-dir")] = Path(".broker"),
    lifetime: Annotated[int, typer.Option(help="Seconds.")] = 3600,
) -> None:
    """Print an identity token from the dev issuer (dev mode only)."""
    from broker.dev import dev_token

    if os.environ.get("BROKER_ENV", "").lower() == "production":
        typer.echo("error: dev tokens are refused when BROKER_ENV=production", err=True)
        raise typer.Exit(2)
    try:
        typer.echo(dev_token(data_dir.resolve(), subject, lifetime))
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@keys_app.command("rotate")
def keys_rotate(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Add a new active signing key; old keys stay in the JWKS until their tokens expire."""
    from broker.app import open_keys

    key = open_keys(_settings(config, data_dir)).rotate()
    typer.echo(f"active key: {key.kid} ({key.alg})")


@keys_app.command("list")
def keys_list(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """List signing keys and their state."""
    from broker.app import open_keys

    store = open_keys(_settings(config, data_dir))
    active = store.active.kid
    for key in store.keys():
        state = "active" if key.kid == active else f"retired at {int(key.retired_at or 0)}"
        typer.echo(f"{key.kid}\t{key.alg}\t{state}")


@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = None, data_dir: DataDirOpt = None, database_url: DbOpt = None) -> None:
    """Migrate the ledger schema to the newest revision (safe while other replicas run or start)."""
    from broker.ledger import make_engine, migrate

    settings = _settings(config, data_dir, database_url)
    if settings.database.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    revision = migrate.upgrade(make_engine(settings.database, pool=settings.db_pool))
    typer.echo(f"schema at revision {revision} (head {migrate.head()})")


@vault_app.command("plan")
def vault_plan(config: ConfigOpt = None) -> None:
    """Print the policies, token roles and engine roles the config's boundaries need (YAML)."""
    from broker.backends.plan import make_plan

    typer.echo(make_plan(_settings(config)).render(), nl=False)


@vault_app.command("apply")
def vault_apply(config: ConfigOpt = None) -> None:
    """Write the plan to the config's Vault (a dev or test server: it needs a token allowed to write policies)."""
    from broker.backends.plan import apply_plan, make_plan
    from broker.backends.vault import VaultClient

    settings = _settings(config)
    if settings.vault is None:
        typer.echo("error: the config has no `vault:` section", err=True)
        raise typer.Exit(2)
    try:
        written = apply_plan(make_plan(settings), VaultClient(settings.vault))
    except BrokerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo("\n".join(written))


# `audit verify` (offline, file or API), `audit tail/export`, `grants`, `revoke`, `freeze`, `report`
cli_operator.register(app, audit_app)
cli_mcp.register(app)


def main() -> None:
    try:
        app()
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
