"""`broker signals`: each Shared Signals stream's delivery state, read from the ledger database."""

from __future__ import annotations

import json

import typer

from broker.cli.options import JsonOpt, Local, OutputOpt, as_json, offline
from broker.cli.output import inert, print_table, say, table


@offline
def streams(*, local: Local, output: OutputOpt = None, json_flag: JsonOpt = False) -> None:
    """Signal streams: SETs waiting (lag), age of the oldest, sent, failed, last error (-o json: one object a line)."""
    from broker.app import open_ledger_read_only
    from broker.signals.outbox import SignalOutbox

    settings = local.settings()
    ledger = open_ledger_read_only(settings)
    try:
        rows = SignalOutbox(ledger.engine, settings.issuer).lag()
    finally:
        ledger.engine.dispose()
    if as_json(output, json_flag):
        for row in rows:
            typer.echo(json.dumps(row, sort_keys=True))
        return
    if not rows:
        say("no signal streams")
        return
    columns = ("stream", "receiver", "method", "status", "pending", "lag s", "sent", "failed", "last error")
    shown = table(f"{len(rows)} signal streams", *columns, ids=("stream", "receiver"))
    for r in rows:  # receivers chose their subjects and errors quote their answers: printed inert
        shown.add_row(inert(r["stream_id"]), inert(r["owner"]), "push" if r["method"].endswith("8935") else "poll",
                      inert(r["status"]), str(r["pending"]), f"{r['oldest_age']:.1f}", str(r["sent"]), str(r["failed"]),
                      inert(r["last_error"] or "-"))  # fmt: skip
    print_table(shown)


def register(app: typer.Typer) -> None:
    app.command("signals")(streams)
