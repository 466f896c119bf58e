"""`broker keys`: the signing keys."""

from __future__ import annotations

import datetime as dt
from typing import Any

import typer

from broker.cli.options import ConfigOpt, DataDirOpt, OutputOpt, as_json, settings_or_exit
from broker.cli.output import emit_json, fail, inert, print_table, table
from broker.errors import ConfigError
from broker.signing import SigningKey

group = typer.Typer(help="Signing keys.", no_args_is_help=True)


@group.command("rotate")
def keys_rotate(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Add a new active signing key; old keys stay in the JWKS until their tokens expire."""
    from broker.app import open_keys

    key = open_keys(settings_or_exit(config, data_dir)).rotate()
    typer.echo(f"active key: {key.kid} ({key.alg})")


@group.command("list")
def keys_list(config: ConfigOpt = None, data_dir: DataDirOpt = None, output: OutputOpt = None) -> None:
    """List signing keys and their state; read-only (never makes a key, a folder or a ledger)."""
    from broker.app import read_keys

    try:
        rows = key_rows(read_keys(settings_or_exit(config, data_dir)))
    except ConfigError as exc:
        fail(str(exc))
    if as_json(output, False):
        emit_json({"items": rows})
        return
    shown = table(f"{len(rows)} signing keys", "kid", "alg", "state", "created", "retired", ids=("kid",))
    for row in rows:
        shown.add_row(*(inert(row[k] or "-") for k in ("kid", "alg", "state", "created_at", "retired_at")))
    print_table(shown)


def key_rows(keys: list[SigningKey]) -> list[dict[str, Any]]:
    """Newest first; `active` is the newest unretired key (the one that signs), as the key store decides."""
    live = [k for k in keys if k.retired_at is None]
    active = max(live, key=lambda k: k.created_at).kid if live else None
    return [{"kid": k.kid, "alg": k.alg, "state": "active" if k.kid == active else "retired",
             "created_at": _iso(k.created_at), "retired_at": _iso(k.retired_at)}
            for k in sorted(keys, key=lambda k: k.created_at, reverse=True)]  # fmt: skip


def _iso(moment: float | None) -> str | None:
    return None if moment is None else dt.datetime.fromtimestamp(moment, dt.UTC).isoformat(timespec="seconds")


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="keys")
