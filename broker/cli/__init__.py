"""The `broker` command: one module per command group, each registered here.

A new command group is a module with a `register(app)` function, added to `GROUPS`.
Shared options and settings-or-exit live in `options.py`, printing in `output.py`,
the HTTP calls to a running broker in `remote.py`.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from broker.cli import about, audit, db, grants, incident, keys, log, mcp, policy, report, serve, signals, vault, x509
from broker.cli.output import EXIT_CODES
from broker.errors import ConfigError

app = typer.Typer(help="Short-lived credential broker.", epilog=EXIT_CODES, no_args_is_help=True,
                  pretty_exceptions_enable=False)  # fmt: skip


def _print_version(wanted: bool) -> None:
    if wanted:
        typer.echo(f"broker {about.broker_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the broker's version and exit.")] = False,
) -> None:  # fmt: skip
    """Short-lived credential broker."""

# in the order `broker --help` lists them
GROUPS = (serve, x509, keys, audit, log, db, vault, policy, mcp, grants, report, incident, signals, about)
for group in GROUPS:
    group.register(app)


def main() -> None:
    try:
        app()
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
