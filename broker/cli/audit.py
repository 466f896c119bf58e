"""`broker audit tail/export/verify`: the tamper-evident ledger, from the API or offline."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from broker.cli.options import Local, Where, filters, offline, remote
from broker.cli.output import TAMPERED, errors, inert, say
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
) -> None:
    """Print the newest events as JSON Lines; with -f, keep following the ledger."""
    page = broker.call("GET", "/v1/audit", params={**where, "last": lines})
    _print_events(page["items"])
    cursor, stop = page["next_cursor"], time.monotonic() + (duration if duration is not None else float("inf"))
    while follow and time.monotonic() < stop:
        time.sleep(interval)
        page = broker.call("GET", "/v1/audit", params={**where, "cursor": cursor, "limit": 1000})
        _print_events(page["items"])
        cursor = page["items"][-1]["seq"] if page["items"] else cursor


def _print_events(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        typer.echo(json.dumps(row, separators=(",", ":")))  # ASCII: no control or bidi character reaches the terminal
    sys.stdout.flush()


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
    while rows := ledger.audit(query, after_seq=after, limit=1000):
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
) -> None:
    """Walk the hash chain (the database, an export file, or the broker's API); exit 5 naming the first bad row.

    With --checkpoint: offline and read-only, rebuild the Merkle tree and prove the ledger extends it;
    exit 0 verified, 5 tampered, 1 cannot read, 2 usage.
    """  # fmt: skip
    from broker.ledger import verify_export

    if checkpoint is not None:
        from broker.cli.checkpoint import verify_against_checkpoint

        return verify_against_checkpoint(local.settings(), checkpoint, log_key, witness_key or [])
    if file is not None:
        result, gaps = verify_export(json.loads(line) for line in file.read_text().splitlines() if line.strip())
        report = {**result.__dict__, "gaps": gaps}
    elif (ledger := local.ledger()) is not None:
        report = ledger.verify().__dict__
    else:
        report = broker.call("GET", "/v1/audit/verify")
    typer.echo(json.dumps(report))
    if not report["ok"]:
        bad = (inert(report["first_bad_seq"]), ": ", inert(report["problem"]))
        say("TAMPERED: first bad row seq=", *bad, console_=errors)
        raise typer.Exit(TAMPERED)


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="audit")
