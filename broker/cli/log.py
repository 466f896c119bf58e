"""`broker log key` (the transparency log's verifier key) and `broker witness serve|key` (a tlog-witness)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from broker.cli.options import ConfigOpt, DataDirOpt, settings_or_exit

log_group = typer.Typer(help="The transparency log.", no_args_is_help=True)
witness_group = typer.Typer(help="A tlog-witness for the transparency log (its own process, key and state).",
                            no_args_is_help=True)  # fmt: skip


@log_group.command("key")
def log_key(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    rotate: Annotated[bool, typer.Option("--rotate", help="Make a new active log key first.")] = False,
) -> None:
    """Print the log's verifier key (C2SP signed-note), the `--log-key` of auditors and witnesses."""
    from broker.app import log_keys, open_ledger
    from broker.transparency.keys import load_or_create
    from broker.transparency.keys import rotate as rotate_key

    settings = settings_or_exit(config, data_dir)
    keys = log_keys(settings, open_ledger(settings))
    if rotate:
        rotate_key(keys, settings.log_name)
    active = keys.active()  # the key the log signs with, whatever this config's origin says
    typer.echo((active or load_or_create(keys, settings.log_name)).verifier.key_string())


@witness_group.command("serve")
def witness_serve(
    log_key: Annotated[str, typer.Option("--log-key", help="The log's verifier key (`broker log key`).")],
    data_dir: Annotated[Path, typer.Option("--data-dir", help="The witness's key and state.")],
    port: Annotated[int, typer.Option(help="Port.")] = 8090,
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    name: Annotated[str, typer.Option(help="The witness's key name, e.g. witness.example/w1.")] = "broker-witness",
) -> None:
    """Cosign the log's checkpoints that extend the last one seen (C2SP tlog-witness add-checkpoint)."""
    from broker.transparency import witness
    from broker.transparency.note import NoteError

    try:
        witness.serve(port, data_dir, log_key, name, host)
    except NoteError as exc:
        typer.echo(f"error: --log-key: {exc}", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:  # the port is taken or not ours to bind
        typer.echo(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        raise typer.Exit(1) from None


@witness_group.command("key")
def witness_key(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="The witness's key and state.")],
    name: Annotated[str, typer.Option(help="The witness's key name.")] = "broker-witness",
) -> None:
    """Print the witness's cosignature verifier key (the broker's `log_witnesses[].key`, auditors' `--witness-key`)."""
    from broker.transparency.witness import Cosigner, load_seed

    typer.echo(Cosigner(name, load_seed(data_dir / "witness_key")).verifier.key_string())


def register(app: typer.Typer) -> None:
    app.add_typer(log_group, name="log")
    app.add_typer(witness_group, name="witness")
