"""The `broker` command: serve, dev, dev-token, keys, audit."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from broker.config import Settings, load_settings
from broker.errors import ConfigError

app = typer.Typer(help="Short-lived credential broker.", no_args_is_help=True, pretty_exceptions_enable=False)
keys_app = typer.Typer(help="Signing keys.", no_args_is_help=True)
audit_app = typer.Typer(help="The tamper-evident ledger.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")

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
) -> None:
    """Run the broker with a config file (production)."""
    import uvicorn

    settings = _settings(config)  # validate before forking workers: errors name file and field
    if settings.config:
        os.environ["BROKER_CONFIG"] = str(settings.config)
    uvicorn.run(
        "broker.app:app_from_env", factory=True, host=host, port=port, workers=workers, log_level=log_level,
        access_log=False, proxy_headers=False,
    )


@app.command()
def dev(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8080,
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Where dev keys and the ledger live.")] = Path(".broker"),
) -> None:
    """Run the broker on 127.0.0.1 with a demo config and a local development identity issuer."""
    import uvicorn

    from broker.app import create_app
    from broker.dev import dev_settings, dev_token

    try:
        settings = dev_settings(data_dir, port)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(_dev_banner(settings, dev_token(settings.data_dir, "dev:demo-workload")))
    uvicorn.run(create_app(settings), host="127.0.0.1", port=port, log_level="warning")


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


@audit_app.command("verify")
def audit_verify(config: ConfigOpt = None, data_dir: DataDirOpt = None, database_url: DbOpt = None) -> None:
    """Walk the hash chain; exit 0 when intact, 1 naming the first bad row."""
    from broker.app import open_ledger

    result = open_ledger(_settings(config, data_dir, database_url)).verify()
    typer.echo(json.dumps(result.__dict__))
    if not result.ok:
        typer.echo(f"TAMPERED: first bad row seq={result.first_bad_seq}: {result.problem}", err=True)
        raise typer.Exit(1)


def main() -> None:
    try:
        app()
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
