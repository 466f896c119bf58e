"""`broker --version`, `broker version` and `broker config validate`."""

from __future__ import annotations

from importlib.metadata import version as package_version

import typer

from broker.cli.options import ConfigOpt, OutputOpt, as_json, settings_or_exit
from broker.cli.output import USAGE, emit_json, fail
from broker.config import refuse_embedded_ledger
from broker.errors import ConfigError

config_group = typer.Typer(help="The broker's configuration.", no_args_is_help=True)


def broker_version() -> str:
    return package_version("broker")


def version(config: ConfigOpt = None, output: OutputOpt = None) -> None:
    """Print the broker, ledger schema and (with a config) policy revisions."""
    from broker.ledger import migrate

    found = {"broker": broker_version(), "schema": migrate.head(), "policy": None}
    if config is not None:
        from broker.app import open_policy

        try:
            found["policy"] = open_policy(settings_or_exit(config)).current.digest
        except ConfigError as exc:
            fail(str(exc))
    if as_json(output, False):
        emit_json(found)
        return
    for key, value in found.items():
        typer.echo(f"{key}\t{value if value is not None else '-'}")


@config_group.command("validate")
def config_validate(config: ConfigOpt = None) -> None:
    """Check the config and its policy; print every error (each naming file and field), exit 2 if any."""
    from broker.app import open_policy

    settings = settings_or_exit(config)
    try:
        policy = open_policy(settings).current
        refuse_embedded_ledger(settings)
    except ConfigError as exc:
        fail(str(exc), USAGE)
    typer.echo(f"ok: {settings.config or 'environment'}: {len(settings.boundaries)} boundaries, "
               f"{len(policy.rules)} policy rules, digest {policy.digest}")  # fmt: skip


def register(app: typer.Typer) -> None:
    app.command()(version)
    app.add_typer(config_group, name="config")
