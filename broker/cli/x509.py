"""CLI for X.509-SVIDs: `broker dev-svid`, and the uvicorn options `serve`/`dev --tls` add for HTTPS."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from broker.config import Settings, production_by_env
from broker.errors import ConfigError


def serve_options(settings: Settings) -> dict[str, Any]:
    """uvicorn options serving HTTPS (client certificates asked for, not required) when `tls:` is set."""
    from broker.serving import uvicorn_tls

    try:
        return uvicorn_tls(settings)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def dev_svid(
    subject: Annotated[str, typer.Option(help="SPIFFE ID, e.g. spiffe://dev.local/ns/demo/sa/worker.")],
    out: Annotated[Path, typer.Option(help="Folder for svid.pem, svid_key.pem, bundle.pem.")],
    data_dir: Annotated[Path, typer.Option("--data-dir")] = Path(".broker"),
) -> None:
    """Write a dev X.509-SVID as spiffe-helper would (dev mode only; `broker dev --tls` accepts it)."""
    from broker.dev_svid import write_dev_svid

    if production_by_env():
        typer.echo("error: dev SVIDs are refused when BROKER_ENV=production", err=True)
        raise typer.Exit(2)
    try:
        files = write_dev_svid(data_dir.resolve(), subject, out)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo("\n".join(str(f) for f in files))


def register(app: typer.Typer) -> None:
    app.command("dev-svid")(dev_svid)
