"""`broker revoke`, `freeze`, `unfreeze`, `freezes`: cut access off during an incident."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from broker.cli.options import BoundaryOpt, JsonOpt, OutputOpt, ReasonOpt, Where, as_json, filters, remote
from broker.cli.output import console, errors, inert, params, print_table, say
from broker.cli.output import table as output_table
from broker.cli.remote import Remote

ExactSubjectOpt = Annotated[Optional[str], typer.Option("--subject", help="Exact subject.")]


@remote
@filters("subject", "subject_glob", "boundary", "task")
def revoke(
    broker: Remote,
    reason: ReasonOpt,
    *,
    where: Where,
    grant_id: Annotated[Optional[str], typer.Option("--grant-id", help="One grant.")] = None,
    rule: Annotated[Optional[str], typer.Option("--rule", help="Every grant this policy rule allowed.")] = None,
    policy_revision: Annotated[
        Optional[str], typer.Option("--policy-revision", help="Every grant this policy revision allowed.")
    ] = None,
    everything: Annotated[bool, typer.Option("--all", help="Every active grant.")] = False,
    freeze: Annotated[bool, typer.Option("--freeze", help="Also freeze the subject or boundary.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the backends.")] = 120.0,
    output: OutputOpt = None,
    json_flag: JsonOpt = False,
) -> None:
    """Revoke every active grant a selector matches; exit 1 if any revocation stays pending."""
    selector = where | params(grant_id=grant_id, rule=rule, policy_revision=policy_revision) | (
        {"all": True} if everything else {}
    )
    body = {**selector, "reason": reason, "freeze": freeze}
    matched = broker.call("POST", "/v1/revocations", json={**body, "dry_run": True})["matched"]
    what = inert(", ".join(f"{k}={v}" for k, v in selector.items())).plain
    if matched == 0 and not freeze:
        say("no active grant matches ", what, ": nothing to revoke")
        return
    if not yes and not typer.confirm(f"Revoke {matched} active grants ({what}){' and freeze' if freeze else ''}?"):
        raise typer.Exit(1)
    status = broker.call("POST", "/v1/revocations", json={**body, "wait": False})
    status = _follow(broker, status, timeout, quiet=as_json(output, json_flag))
    if as_json(output, json_flag):
        typer.echo(json.dumps(status))
    else:
        console.print(_revocation_table(status))
    if status["pending"] or status["status"] != "done":
        say(inert(status["pending"]), " revocations still pending; the outbox keeps retrying them", console_=errors)
        raise typer.Exit(1)


def _follow(broker: Remote, status: dict[str, Any], timeout: float, quiet: bool) -> dict[str, Any]:
    """Poll the revocation until it settles, with a progress bar when it is large."""
    deadline = time.monotonic() + timeout
    path = f"/v1/revocations/{status['revocation_id']}"
    columns = (TextColumn("revoking"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=errors, disable=quiet or status["matched"] < 100, transient=True) as bar:
        task = bar.add_task("revoke", total=status["matched"])
        while status["status"] == "in_progress" and time.monotonic() < deadline:
            bar.update(task, completed=status["revoked"])
            time.sleep(0.2)
            status = broker.call("GET", path)
        bar.update(task, completed=status["revoked"])
    return status


def _revocation_table(status: dict[str, Any]) -> Table:
    title = inert(f"revocation {status['revocation_id']}: {status['status']}")
    table = Table(title=title, title_justify="left")
    for column in ("selector", "reason", "matched", "revoked", "pending"):
        table.add_column(column)
    selector = inert(", ".join(f"{k}={v}" for k, v in status["selector"].items()))
    pending = Text(inert(status["pending"]).plain, style="red" if status["pending"] else "")
    table.add_row(selector, inert(status["reason"]), inert(status["matched"]), inert(status["revoked"]), pending)
    return table


@remote
def freeze(broker: Remote, reason: ReasonOpt, subject: ExactSubjectOpt = None, boundary: BoundaryOpt = None) -> None:
    """Refuse every new grant to a subject or at a boundary until `broker unfreeze`."""
    _freeze_call(broker, "/v1/freezes", "frozen", "already frozen",
                 subject=subject, boundary=boundary, reason=reason)  # fmt: skip


@remote
def unfreeze(broker: Remote, reason: ReasonOpt, subject: ExactSubjectOpt = None, boundary: BoundaryOpt = None) -> None:
    """Lift a freeze."""
    _freeze_call(broker, "/v1/freezes/lift", "unfrozen", "was not frozen",
                 subject=subject, boundary=boundary, reason=reason)  # fmt: skip


def _freeze_call(broker: Remote, path: str, done: str, unchanged: str, **values: Optional[str]) -> None:
    answer = broker.call("POST", path, json=params(**values))
    note = "" if answer["changed"] else f" ({unchanged})"
    say(f"{done}: ", inert(answer["kind"]), " ", inert(answer["value"]), note)


@remote
def freezes(broker: Remote, output: OutputOpt = None, json_flag: JsonOpt = False) -> None:
    """List frozen subjects and boundaries."""
    items = broker.call("GET", "/v1/freezes")["items"]
    if as_json(output, json_flag):
        typer.echo(json.dumps(items))
        return
    table = output_table(f"{len(items)} freezes", "kind", "value", "reason", "by", "since", ids=("value", "by"))
    for item in items:
        table.add_row(*(inert(item[k]) for k in ("kind", "value", "reason", "actor")), inert(item["created_at"][:19]))
    print_table(table)


def register(app: typer.Typer) -> None:
    for command in (revoke, freeze, unfreeze, freezes):
        app.command(command.__name__)(command)
