"""`broker mcp`: what an MCP server behind the broker needs to publish."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from broker.backends.mcp import protected_resource_metadata
from broker.config import load_settings
from broker.errors import ConfigError

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file (or BROKER_CONFIG).")]
mcp_app = typer.Typer(help="MCP servers as boundaries.", no_args_is_help=True)


@mcp_app.command("metadata")
def metadata(
    boundary: Annotated[str, typer.Argument(help="Name of an mcp boundary.")],
    config: ConfigOpt = None,
) -> None:
    """Print the RFC 9728 protected-resource metadata the MCP server should serve."""
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    found = settings.boundary(boundary)
    if found is None or found.backend != "mcp":
        typer.echo(f"error: no mcp boundary named {boundary!r}", err=True)
        raise typer.Exit(2)
    typer.echo(json.dumps(protected_resource_metadata(found, settings.issuer), indent=2, ensure_ascii=True))


def register(app: typer.Typer) -> None:
    app.add_typer(mcp_app, name="mcp")
