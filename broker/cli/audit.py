"""`broker audit tail/export/verify`: the tamper-evident ledger, from the API or offline."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from broker.cli.options import Local, Output, Where, as_json, filters, offline, remote
from broker.cli.output import TAMPERED, errors, inert, print_table, say, table
from broker.cli.remote import Remote

group = typer.Typer(help="The tamper-evident ledger.", no_args_is_help=True)


@group.command("tail")
@remote
@filters("kind", "subject", "subject_glob", "rule", "policy_revision", "boundary")
def audit_tail(
    broker: Remote,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events.")] = False,
    lines: Annotated[int, typer.Option("-n", help="How many recent events first.")] = 20,
    *,
    where: Where,
    interval: Annotated[float, typer.Option(help="Seconds between polls with -f.")] = 1.0,
    duration: Annotated[Optional[float], typer.Option("--for", help="Stop following after N seconds.")] = None,
    output: Annotated[Optional[Output], typer.Option("--output", "-o", help="json (JSON Lines, the default) or table.")] = None,
) -> None:
    """Print the newest events as JSON Lines (or a table); with -f, keep following the ledger."""
    show = _print_events if as_json(output, False, default=Output.json) else _print_event_table
    page = broker.call("GET", "/v1/audit", params={**where, "last": lines})
    show(page["items"], True)
    cursor, stop = page["next_cursor"], time.monotonic() + (duration if duration is not None else float("inf"))
    while follow and time.monotonic() < stop:
        time.sleep(interval)
        page = broker.call("GET", "/v1/audit", params={**where, "cursor": cursor, "limit": 1000})
        show(page["items"], False)
        cursor = page["items"][-1]["seq"] if page["items"] else cursor


def _print_events(rows: list[dict[str, Any]], _first: bool) -> None:
    for row in rows:
        typer.echo(json.dumps(row, separators=(",", ":")))  # ASCII: no control or bidi character reaches the terminal
    sys.stdout.flush()


EVENT_COLUMNS = {"seq": "seq", "time": "ts", "kind": "kind", "subject": "subject", "boundary": "boundary",
                 "task": "task", "grant": "grant_id", "actor": "actor"}  # fmt: skip


def _print_event_table(rows: list[dict[str, Any]], first: bool) -> None:
    """One table per batch; with -f, later batches add rows under the first header."""
    if not rows and not first:
        return
    shown = table("", *EVENT_COLUMNS, ids=("seq", "subject", "boundary", "task", "grant", "actor"))
    shown.show_header, shown.title = first, None
    for row in rows:
        shown.add_row(*(inert("-" if row.get(k) is None else _when(row[k]) if k == "ts" else row[k])
                        for k in EVENT_COLUMNS.values()))  # fmt: skip
    print_table(shown)
    sys.stdout.flush()


def _when(ts: Any) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%d %H:%M:%S") if isinstance(ts, int | float) else str(ts)


@group.command("export")
@remote
@filters("kind", "subject", "subject_glob", "rule", "policy_revision", "boundary", "task", "since", "until")
@offline
def audit_export(
    broker: Remote,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="File to write (default stdout).")] = None,
    *,
    where: Where,
    local: Local,
) -> None:
    """Export events as JSON Lines (each with its hashes), from the API or offline from the ledger."""
    ledger = local.ledger()
    rows = _offline_lines(ledger, where) if ledger else broker.lines("/v1/audit", where)
    sink = output.open("w") if output else sys.stdout
    count = 0
    try:
        for line in rows:
            sink.write(line + "\n")
            count += 1
    finally:
        if output:
            sink.close()
    say(f"exported {count} events", console_=errors)


def _offline_lines(ledger, where: Where) -> Iterator[str]:  # noqa: ANN001
    from broker.config import instant
    from broker.ledger import Filter, event_dict

    now = time.time()
    bounds = {"since": instant(where.pop("since", None), now), "until": instant(where.pop("until", None), now)}
    query, after = Filter(**where, **bounds), 0
    while rows := ledger.queries.audit(query, after_seq=after, limit=1000):
        yield from (json.dumps(event_dict(row), separators=(",", ":"), ensure_ascii=False) for row in rows)
        after = rows[-1].seq


@group.command("verify")
@remote
@offline
def audit_verify(
    broker: Remote,
    file: Annotated[Optional[Path], typer.Option("--file", "-f", help="Verify a JSON Lines export offline.")] = None,
    *,
    local: Local,
    checkpoint: Annotated[Optional[str], typer.Option(
        "--checkpoint", help="Offline: prove the ledger extends this signed checkpoint (file or URL).")] = None,
    log_key: Annotated[Optional[str], typer.Option("--log-key", help="The log's verifier key (`broker log key`).")] = None,
    witness_key: Annotated[Optional[list[str]], typer.Option(
        "--witness-key", help="Require this witness's cosignature (repeatable).")] = None,
    output: Annotated[Optional[Output], typer.Option("--output", "-o", help="json (the default) or table.")] = None,
) -> None:
    """Walk the hash chain (the database, an export file, or the broker's API); exit 5 naming the first bad row.

    With --checkpoint: offline and read-only, rebuild the Merkle tree and prove the ledger extends it;
    exit 0 verified, 5 tampered, 1 cannot read, 2 usage.
    """  # fmt: skip
    from broker.ledger import verify_export

    show = (lambda found: typer.echo(json.dumps(found))) if as_json(output, False, Output.json) else _print_report
    if checkpoint is not None:
        from broker.cli.checkpoint import verify_against_checkpoint

        return verify_against_checkpoint(local.settings(), checkpoint, log_key, witness_key or [], show)
    if file is not None:
        result, gaps = verify_export(json.loads(line) for line in file.read_text().splitlines() if line.strip())
        report = {**result.__dict__, "gaps": gaps}
    elif (ledger := local.ledger()) is not None:
        report = ledger.verify().__dict__
    else:
        report = broker.call("GET", "/v1/audit/verify")
    show(report)
    if not report["ok"]:
        bad = (inert(report["first_bad_seq"]), ": ", inert(report["problem"]))
        say("TAMPERED: first bad row seq=", *bad, console_=errors)
        raise typer.Exit(TAMPERED)


def _print_report(report: dict[str, Any]) -> None:
    """The verification report as a two-column table (hashes and ids whole)."""
    shown = table("ledger verified" if report.get("ok") else "TAMPERED", "check", "result", ids=("result",))
    for key, value in report.items():
        shown.add_row(inert(key), inert(json.dumps(value) if isinstance(value, dict | list) else value))
    print_table(shown)


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="audit")
