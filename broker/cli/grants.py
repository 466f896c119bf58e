"""`broker grants ls`: the live inventory of grants."""

from __future__ import annotations

import json
from enum import Enum
from typing import Annotated, Any, Optional

import typer
from rich.table import Table
from rich.text import Text

from broker.cli.options import JsonOpt, OutputOpt, Where, as_json, filters, remote
from broker.cli.output import inert, params, print_table, say
from broker.cli.output import table as output_table
from broker.cli.remote import Remote
from broker.ledger import FINAL_STATUSES

GrantStatus = Enum("GrantStatus", {name: name for name in ("active", "revoke_pending", *FINAL_STATUSES)}, type=str)
group = typer.Typer(help="The live inventory of grants.", no_args_is_help=True)


@group.command("ls")
@remote
@filters("subject", "subject_glob", "rule", "policy_revision", "boundary", "task", "since", "until")
def grants_ls(
    broker: Remote,
    status: Annotated[Optional[GrantStatus], typer.Option(help="Grant status.")] = None,
    *,
    where: Where,
    limit: Annotated[int, typer.Option(help="Rows per page (1-1000).")] = 50,
    cursor: Annotated[Optional[str], typer.Option(help="Continue from a previous page.")] = None,
    all_pages: Annotated[bool, typer.Option("--all", help="Follow every page.")] = False,
    output: OutputOpt = None,
    json_flag: JsonOpt = False,
) -> None:
    """Who holds what, where, until when."""
    query = params(status=status.value if status else None, **where, limit=limit)
    rows, next_cursor = [], cursor
    while True:
        page = broker.call("GET", "/v1/grants", params={**query, **params(cursor=next_cursor)})
        rows += page["items"]
        next_cursor = page["next_cursor"]
        if not (all_pages and next_cursor):
            break
    if as_json(output, json_flag):
        typer.echo(json.dumps({"items": rows, "next_cursor": next_cursor}))
        return
    print_table(_grants_table(rows))
    if next_cursor:
        say("more: --cursor ", inert(next_cursor))


def _grants_table(rows: list[dict[str, Any]]) -> Table:
    columns = ("grant", "subject", "task", "boundary", "scopes", "status", "expires")
    table = output_table(f"{len(rows)} grants", *columns, ids=("grant", "subject", "task", "boundary"))
    styles = {"active": "green", "revoke_pending": "yellow", "revoked": "red"}
    for row in rows:
        status = row["status"]
        table.add_row(
            *(inert(row[k]) for k in ("grant_id", "subject", "task", "boundary")), inert(" ".join(row["scopes"])),
            Text(inert(status).plain, style=styles.get(status, "dim")), inert(row["expires_at"][:19].replace("T", " ")),
        )
    return table


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="grants")
