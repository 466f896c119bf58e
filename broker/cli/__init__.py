"""The `broker` command: one module per command group, each registered here.

A new command group is a module with a `register(app)` function, added to `GROUPS`.
Shared options and settings-or-exit live in `options.py`, printing in `output.py`,
the HTTP calls to a running broker in `remote.py`.
"""

from __future__ import annotations

import sys

import typer

from broker.cli import audit, db, grants, incident, keys, report, serve, vault
from broker.errors import ConfigError

app = typer.Typer(help="Short-lived credential broker.", no_args_is_help=True, pretty_exceptions_enable=False)

# in the order `broker --help` lists them
GROUPS = (serve, keys, audit, db, vault, grants, report, incident)
for group in GROUPS:
    group.register(app)


def main() -> None:
    try:
        app()
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
