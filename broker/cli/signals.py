"""`broker signals`: each Shared Signals stream's delivery state, read from the ledger database."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from broker.cli.options import Local, offline
from broker.cli.output import inert


@offline
def streams(
    *,
    local: Local,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per stream.")] = False,
) -> None:
    """Signal streams: SETs waiting (lag), age of the oldest, sent, failed, last error."""
    from broker.app import open_ledger_read_only
    from broker.signals.outbox import SignalOutbox

    settings = local.settings()
    ledger = open_ledger_read_only(settings)
    try:
        rows = SignalOutbox(ledger.engine, settings.issuer).lag()
    finally:
        ledger.engine.dispose()
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row, sort_keys=True))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("stream", "receiver", "method", "status", "pending", "lag s", "sent", "failed", "last error")
    for r in rows:  # receivers chose their subjects and errors quote their answers: printed inert
        table.add_row(r["stream_id"], inert(r["owner"]), "push" if r["method"].endswith("8935") else "poll", r["status"],
                      str(r["pending"]), f"{r['oldest_age']:.1f}", str(r["sent"]), str(r["failed"]),
                      inert(r["last_error"] or "-"))  # fmt: skip
    Console().print(table if rows else "no signal streams")


def register(app: typer.Typer) -> None:
    app.command("signals")(streams)
