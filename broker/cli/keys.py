"""`broker keys`: the signing keys."""

from __future__ import annotations

import typer

from broker.cli.options import ConfigOpt, DataDirOpt, settings_or_exit

group = typer.Typer(help="Signing keys.", no_args_is_help=True)


@group.command("rotate")
def keys_rotate(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Add a new active signing key; old keys stay in the JWKS until their tokens expire."""
    from broker.app import open_keys

    key = open_keys(settings_or_exit(config, data_dir)).rotate()
    typer.echo(f"active key: {key.kid} ({key.alg})")


@group.command("list")
def keys_list(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """List signing keys and their state."""
    from broker.app import open_keys

    store = open_keys(settings_or_exit(config, data_dir))
    active = store.active.kid
    for key in store.keys():
        state = "active" if key.kid == active else f"retired at {int(key.retired_at or 0)}"
        typer.echo(f"{key.kid}\t{key.alg}\t{state}")


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="keys")
