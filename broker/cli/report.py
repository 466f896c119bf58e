"""`broker report blast-radius`: what a subject reached, from the API or offline."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from broker.cli.options import JsonOpt, Local, OutputOpt, UntilOpt, Where, as_json, filters, offline, remote
from broker.cli.output import console, inert, params, say
from broker.cli.remote import Remote

group = typer.Typer(help="Incident reports.", no_args_is_help=True)


@group.command("blast-radius")
@remote
@filters("subject", "subject_glob")
@offline
def report_blast_radius(
    broker: Remote,
    *,
    where: Where,
    since: Annotated[str, typer.Option("--since", help="ISO 8601, epoch seconds, or ago: 24h.")] = "24h",
    until: UntilOpt = None,
    output: OutputOpt = None,
    json_flag: JsonOpt = False,
    local: Local,
) -> None:
    """What a subject reached in a window: boundaries, scopes, live and revoked grants."""
    ledger = local.ledger()
    if ledger is not None:
        from broker.api.schemas import BlastRadiusOut
        from broker.config import instant
        from broker.grants.operations import blast_radius
        from broker.ledger import Filter

        now = time.time()
        who = Filter(subject=where.get("subject"), subject_glob=where.get("subject_glob"))
        found = blast_radius(ledger, who, instant(since, now) or 0.0, instant(until, now) or now, now)
        report = BlastRadiusOut.of(found).model_dump(mode="json")
    else:
        query = {**where, **params(since=since, until=until)}
        report = broker.call("GET", "/v1/reports/blast-radius", params=query)
    if as_json(output, json_flag):
        typer.echo(json.dumps(report))
        return
    _print_report(report)


def _print_report(report: dict[str, Any]) -> None:
    totals = report["totals"]
    counts = ", ".join(f"{totals[k]} {k}" for k in ("grants", "live", "revoked", "pending", "denied"))
    say(Text(inert(report["subject"]).plain, style="bold"), " from ", inert(report["since"][:19]), " to ",
         inert(report["until"][:19]), ": ", inert(counts))  # fmt: skip
    table = Table(title_justify="left")
    for column in ("boundary", "scopes", "grants", "live", "revoked", "completed", "expired", "last revoked"):
        table.add_column(column, overflow="fold")
    for row in report["boundaries"]:
        last = max((g["revoked_at"] or "" for g in row["revoked_grants"]), default="")
        table.add_row(
            inert(row["boundary"]), inert(" ".join(row["scopes"])),
            *(inert(row[k]) for k in ("grants", "live", "revoked", "completed", "expired")),
            inert(last[:19].replace("T", " ")),
        )
    console.print(table)
    by_rule = Table(title_justify="left")
    for column in ("rule", "boundaries", "scopes", "grants", "live", "revoked"):
        by_rule.add_column(column, overflow="fold")
    for row in report.get("rules", []):
        by_rule.add_row(inert(row["rule"] or "-"), inert(" ".join(row["boundaries"])), inert(" ".join(row["scopes"])),
                        *(inert(row[k]) for k in ("grants", "live", "revoked")))  # fmt: skip
    console.print(by_rule)


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="report")
