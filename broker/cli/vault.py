"""`broker vault`: the Vault/OpenBao objects a config needs."""

from __future__ import annotations

import typer

from broker.cli.options import ConfigOpt, settings_or_exit
from broker.errors import BrokerError

group = typer.Typer(help="The Vault/OpenBao objects a config needs.", no_args_is_help=True)


@group.command("plan")
def vault_plan(config: ConfigOpt = None) -> None:
    """Print the policies, token roles and engine roles the config's boundaries need (YAML)."""
    from broker.app import open_policy
    from broker.backends.plan import make_plan

    settings = settings_or_exit(config)
    try:
        if settings.policy_file or settings.policy:
            open_policy(settings)  # a plan for a policy that cannot load would mislead
    except BrokerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(make_plan(settings).render(), nl=False)


@group.command("apply")
def vault_apply(config: ConfigOpt = None) -> None:
    """Write the plan to the config's Vault (a dev or test server: it needs a token allowed to write policies)."""
    from broker.backends.plan import apply_plan, make_plan
    from broker.backends.vault import VaultClient

    settings = settings_or_exit(config)
    if settings.vault is None:
        typer.echo("error: the config has no `vault:` section", err=True)
        raise typer.Exit(2)
    try:
        written = apply_plan(make_plan(settings), VaultClient(settings.vault))
    except BrokerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo("\n".join(written))


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="vault")
