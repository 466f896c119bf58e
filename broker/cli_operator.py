"""Operator commands: `broker grants ls`, `revoke`, `freeze`/`unfreeze`, `audit tail/export/verify`, `report`.

They talk to the broker at BROKER_URL with an operator identity token (BROKER_IDENTITY_TOKEN,
`--token-file` or `--token-command`); `audit verify`/`export` and the report also run offline
against the data directory or database (`--data-dir`, `--database-url`, `--config`).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    import httpx

grants_app = typer.Typer(help="The live inventory of grants.", no_args_is_help=True)
report_app = typer.Typer(help="Incident reports.", no_args_is_help=True)
console = Console()
errors = Console(stderr=True)

UrlOpt = Annotated[str, typer.Option("--url", envvar="BROKER_URL", help="Broker base URL.")]
TokenFileOpt = Annotated[Optional[Path], typer.Option("--token-file", help="File holding the operator identity token.")]
TokenCmdOpt = Annotated[Optional[str], typer.Option("--token-command", help="Command printing the identity token.")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="Offline: YAML config file.")]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="Offline: the broker's data directory.")]
DbOpt = Annotated[Optional[str], typer.Option("--database-url", help="Offline: SQLAlchemy URL of the ledger.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
SubjectOpt = Annotated[Optional[str], typer.Option("--subject", help="Exact subject (taken literally).")]
GlobOpt = Annotated[Optional[str], typer.Option("--subject-glob", help="Subject pattern like 'repo:acme/*' (policy glob).")]
BoundaryOpt = Annotated[Optional[str], typer.Option("--boundary", help="Boundary name.")]
TaskOpt = Annotated[Optional[str], typer.Option("--task", help="Task id.")]
ExactSubjectOpt = Annotated[Optional[str], typer.Option("--subject", help="Exact subject.")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="Why: recorded in the ledger.")]
SinceOpt = Annotated[Optional[str], typer.Option("--since", help="ISO 8601, epoch seconds, or ago: 15m, 24h.")]
UntilOpt = Annotated[Optional[str], typer.Option("--until", help="ISO 8601, epoch seconds, or ago.")]
KindOpt = Annotated[Optional[str], typer.Option("--kind", help="Event kind: issued, denied, revoked, ...")]
RuleOpt = Annotated[Optional[str], typer.Option("--rule", help="Policy rule id that decided (provenance).")]
RevisionOpt = Annotated[Optional[str], typer.Option("--policy-revision", help="Policy revision (content hash).")]
DEFAULT_URL = "http://127.0.0.1:8080"
# control, format (bidi overrides, zero-width) and line/paragraph separators: shown as escapes
_UNPRINTABLE = frozenset({"Cc", "Cf", "Zl", "Zp"})


def inert(value: object) -> Text:
    """A string from the ledger or the broker as literal text: never rich markup, control characters escaped.

    Subjects, tasks, reasons and actors are chosen by workloads and operators; printed raw, `[/x]`
    breaks the markup parser and an ESC byte drives the operator's terminal.
    """
    return Text("".join(_escaped(ch) for ch in str(value)))


def _escaped(ch: str) -> str:
    if unicodedata.category(ch) not in _UNPRINTABLE:
        return ch
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _say(*parts: object, console_: Console | None = None) -> None:
    """One line of fixed text and inert values (str parts are ours; others go through `inert`)."""
    line = Text.assemble(*(part if isinstance(part, str | Text) else inert(part) for part in parts))
    (console_ or console).print(line, highlight=False)


class Remote:
    """The broker's operator API over HTTP; problem+json answers become a message and exit code 2."""

    def __init__(self, url: str, token_file: Path | None, token_command: str | None) -> None:
        import httpx  # here, not at import: every `broker` command would pay for it

        token = _identity_token(token_file, token_command)
        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=30.0, headers={"Authorization": f"Bearer {token}"})

    def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        import httpx

        try:
            answer = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            _fail(f"cannot reach the broker at {self.http.base_url}: {type(exc).__name__}")
        if answer.status_code >= 400:
            body = _json_or_empty(answer)
            _fail(f"{answer.status_code} {body.get('code', 'error')}: {body.get('detail') or body.get('title', '')}")
        return answer.json()

    def lines(self, path: str, params: dict[str, Any]) -> Iterator[str]:
        with self.http.stream("GET", path, params=params, headers={"Accept": "application/x-ndjson"}) as answer:
            if answer.status_code >= 400:
                answer.read()
                _fail(f"{answer.status_code} {_json_or_empty(answer).get('code', 'error')}")
            yield from answer.iter_lines()


def _identity_token(token_file: Path | None, token_command: str | None) -> str:
    import os

    if token_file is not None:
        return token_file.read_text().strip()
    if token_command:
        done = subprocess.run(shlex.split(token_command), capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            _fail(f"--token-command exited {done.returncode}")
        return done.stdout.strip()
    token = os.environ.get("BROKER_IDENTITY_TOKEN", "").strip()
    if not token:
        _fail("no identity token: set BROKER_IDENTITY_TOKEN, or pass --token-file or --token-command")
    return token


def _json_or_empty(answer: httpx.Response) -> dict[str, Any]:
    try:
        return answer.json()
    except ValueError:
        return {}


def _fail(message: str, code: int = 2) -> None:
    errors.print(Text("error: ", style="red") + inert(message), highlight=False)
    raise typer.Exit(code)


def _params(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _offline(config: Path | None, data_dir: Path | None, database_url: str | None):  # noqa: ANN202
    """The ledger of a local broker, when any offline option is given; else None (use the API)."""
    if config is None and data_dir is None and database_url is None:
        return None
    from broker.app import open_ledger
    from broker.cli import _settings

    return open_ledger(_settings(config, data_dir, database_url))


# --- grants ---------------------------------------------------------------------------------


@grants_app.command("ls")
def grants_ls(
    status: Annotated[Optional[str], typer.Option(help="active, revoke_pending, completed, revoked, expired.")] = None,
    subject: SubjectOpt = None,
    subject_glob: GlobOpt = None,
    boundary: BoundaryOpt = None,
    task: TaskOpt = None,
    rule: RuleOpt = None,
    policy_revision: RevisionOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: Annotated[int, typer.Option(help="Rows per page (1-1000).")] = 50,
    cursor: Annotated[Optional[str], typer.Option(help="Continue from a previous page.")] = None,
    all_pages: Annotated[bool, typer.Option("--all", help="Follow every page.")] = False,
    as_json: JsonOpt = False,
    url: UrlOpt = DEFAULT_URL,
    token_file: TokenFileOpt = None,
    token_command: TokenCmdOpt = None,
) -> None:
    """Who holds what, where, until when."""
    remote = Remote(url, token_file, token_command)
    query = _params(status=status, subject=subject, subject_glob=subject_glob, boundary=boundary, task=task,
                    rule=rule, policy_revision=policy_revision, since=since, until=until, limit=limit)  # fmt: skip
    rows, next_cursor = [], cursor
    while True:
        page = remote.call("GET", "/v1/grants", params={**query, **_params(cursor=next_cursor)})
        rows += page["items"]
        next_cursor = page["next_cursor"]
        if not (all_pages and next_cursor):
            break
    if as_json:
        typer.echo(json.dumps({"items": rows, "next_cursor": next_cursor}))
        return
    console.print(_grants_table(rows))
    if next_cursor:
        _say("more: --cursor ", inert(next_cursor))


def _grants_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{len(rows)} grants", title_justify="left")
    for column in ("grant", "subject", "task", "boundary", "scopes", "status", "expires"):
        table.add_column(column, overflow="fold")
    styles = {"active": "green", "revoke_pending": "yellow", "revoked": "red"}
    for row in rows:
        status = row["status"]
        table.add_row(
            *(inert(row[k]) for k in ("grant_id", "subject", "task", "boundary")), inert(" ".join(row["scopes"])),
            Text(inert(status).plain, style=styles.get(status, "dim")), inert(row["expires_at"][:19].replace("T", " ")),
        )
    return table


# --- revoke, freeze -------------------------------------------------------------------------


def revoke(
    reason: ReasonOpt,
    subject: SubjectOpt = None,
    subject_glob: GlobOpt = None,
    boundary: BoundaryOpt = None,
    task: TaskOpt = None,
    grant_id: Annotated[Optional[str], typer.Option("--grant-id", help="One grant.")] = None,
    rule: Annotated[Optional[str], typer.Option("--rule", help="Every grant this policy rule allowed.")] = None,
    policy_revision: Annotated[
        Optional[str], typer.Option("--policy-revision", help="Every grant this policy revision allowed.")
    ] = None,
    everything: Annotated[bool, typer.Option("--all", help="Every active grant.")] = False,
    freeze: Annotated[bool, typer.Option("--freeze", help="Also freeze the subject or boundary.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the backends.")] = 120.0,
    as_json: JsonOpt = False,
    url: UrlOpt = DEFAULT_URL,
    token_file: TokenFileOpt = None,
    token_command: TokenCmdOpt = None,
) -> None:
    """Revoke every active grant a selector matches; exit 1 if any revocation stays pending."""
    remote = Remote(url, token_file, token_command)
    selector = _params(subject=subject, subject_glob=subject_glob, boundary=boundary, task=task, grant_id=grant_id,
                       rule=rule, policy_revision=policy_revision) | (  # fmt: skip
        {"all": True} if everything else {}
    )
    body = {**selector, "reason": reason, "freeze": freeze}
    matched = remote.call("POST", "/v1/revocations", json={**body, "dry_run": True})["matched"]
    what = inert(", ".join(f"{k}={v}" for k, v in selector.items())).plain
    if matched == 0 and not freeze:
        _say("no active grant matches ", what, ": nothing to revoke")
        return
    if not yes and not typer.confirm(f"Revoke {matched} active grants ({what}){' and freeze' if freeze else ''}?"):
        raise typer.Exit(1)
    status = remote.call("POST", "/v1/revocations", json={**body, "wait": False})
    status = _follow(remote, status, timeout, quiet=as_json)
    if as_json:
        typer.echo(json.dumps(status))
    else:
        console.print(_revocation_table(status))
    if status["pending"] or status["status"] != "done":
        _say(inert(status["pending"]), " revocations still pending; the outbox keeps retrying them", console_=errors)
        raise typer.Exit(1)


def _follow(remote: Remote, status: dict[str, Any], timeout: float, quiet: bool) -> dict[str, Any]:
    """Poll the revocation until it settles, with a progress bar when it is large."""
    deadline = time.monotonic() + timeout
    path = f"/v1/revocations/{status['revocation_id']}"
    columns = (TextColumn("revoking"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=errors, disable=quiet or status["matched"] < 100, transient=True) as bar:
        task = bar.add_task("revoke", total=status["matched"])
        while status["status"] == "in_progress" and time.monotonic() < deadline:
            bar.update(task, completed=status["revoked"])
            time.sleep(0.2)
            status = remote.call("GET", path)
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


def freeze(
    reason: ReasonOpt, subject: ExactSubjectOpt = None, boundary: BoundaryOpt = None, url: UrlOpt = DEFAULT_URL,
    token_file: TokenFileOpt = None, token_command: TokenCmdOpt = None,
) -> None:  # fmt: skip
    """Refuse every new grant to a subject or at a boundary until `broker unfreeze`."""
    _freeze_call(Remote(url, token_file, token_command), "/v1/freezes", "frozen", "already frozen",
                 subject=subject, boundary=boundary, reason=reason)  # fmt: skip


def unfreeze(
    reason: ReasonOpt, subject: ExactSubjectOpt = None, boundary: BoundaryOpt = None, url: UrlOpt = DEFAULT_URL,
    token_file: TokenFileOpt = None, token_command: TokenCmdOpt = None,
) -> None:  # fmt: skip
    """Lift a freeze."""
    _freeze_call(Remote(url, token_file, token_command), "/v1/freezes/lift", "unfrozen", "was not frozen",
                 subject=subject, boundary=boundary, reason=reason)  # fmt: skip


def _freeze_call(remote: Remote, path: str, done: str, unchanged: str, **params: Optional[str]) -> None:
    answer = remote.call("POST", path, json=_params(**params))
    note = "" if answer["changed"] else f" ({unchanged})"
    _say(f"{done}: ", inert(answer["kind"]), " ", inert(answer["value"]), note)


def freezes(
    url: UrlOpt = DEFAULT_URL, token_file: TokenFileOpt = None, token_command: TokenCmdOpt = None, as_json: JsonOpt = False
) -> None:
    """List frozen subjects and boundaries."""
    items = Remote(url, token_file, token_command).call("GET", "/v1/freezes")["items"]
    if as_json:
        typer.echo(json.dumps(items))
        return
    table = Table(title=f"{len(items)} freezes", title_justify="left")
    for column in ("kind", "value", "reason", "by", "since"):
        table.add_column(column, overflow="fold")
    for item in items:
        table.add_row(*(inert(item[k]) for k in ("kind", "value", "reason", "actor")), inert(item["created_at"][:19]))
    console.print(table)


# --- audit ----------------------------------------------------------------------------------


def audit_tail(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events.")] = False,
    lines: Annotated[int, typer.Option("-n", help="How many recent events first.")] = 20,
    kind: KindOpt = None,
    subject: SubjectOpt = None,
    subject_glob: GlobOpt = None,
    boundary: BoundaryOpt = None,
    rule: RuleOpt = None,
    policy_revision: RevisionOpt = None,
    interval: Annotated[float, typer.Option(help="Seconds between polls with -f.")] = 1.0,
    duration: Annotated[Optional[float], typer.Option("--for", help="Stop following after N seconds.")] = None,
    url: UrlOpt = DEFAULT_URL,
    token_file: TokenFileOpt = None,
    token_command: TokenCmdOpt = None,
) -> None:
    """Print the newest events as JSON Lines; with -f, keep following the ledger."""
    remote = Remote(url, token_file, token_command)
    where = _params(kind=kind, subject=subject, subject_glob=subject_glob, boundary=boundary, rule=rule,
                    policy_revision=policy_revision)  # fmt: skip
    page = remote.call("GET", "/v1/audit", params={**where, "last": lines})
    _print_events(page["items"])
    cursor, stop = page["next_cursor"], time.monotonic() + (duration if duration is not None else float("inf"))
    while follow and time.monotonic() < stop:
        time.sleep(interval)
        page = remote.call("GET", "/v1/audit", params={**where, "cursor": cursor, "limit": 1000})
        _print_events(page["items"])
        cursor = page["items"][-1]["seq"] if page["items"] else cursor


def _print_events(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        typer.echo(json.dumps(row, separators=(",", ":")))  # ASCII: no control or bidi character reaches the terminal
    sys.stdout.flush()


def audit_export(
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="File to write (default stdout).")] = None,
    kind: KindOpt = None,
    subject: SubjectOpt = None,
    subject_glob: GlobOpt = None,
    boundary: BoundaryOpt = None,
    task: TaskOpt = None,
    rule: RuleOpt = None,
    policy_revision: RevisionOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DbOpt = None,
    url: UrlOpt = DEFAULT_URL,
    token_file: TokenFileOpt = None,
    token_command: TokenCmdOpt = None,
) -> None:
    """Export events as JSON Lines (each with its hashes), from the API or offline from the ledger."""
    where = _params(kind=kind, subject=subject, subject_glob=subject_glob, boundary=boundary, task=task, since=since,
                    until=until, rule=rule, policy_revision=policy_revision)  # fmt: skip
    ledger = _offline(config, data_dir, database_url)
    rows = _offline_lines(ledger, where) if ledger else Remote(url, token_file, token_command).lines("/v1/audit", where)
    sink = output.open("w") if output else sys.stdout
    count = 0
    try:
        for line in rows:
            sink.write(line + "\n")
            count += 1
    finally:
        if output:
            sink.close()
    _say(f"exported {count} events", console_=errors)


def _offline_lines(ledger, where: dict[str, Any]) -> Iterator[str]:  # noqa: ANN001
    from broker.config import instant
    from broker.ledger import Filter, event_dict

    now = time.time()
    bounds = {"since": instant(where.pop("since", None), now), "until": instant(where.pop("until", None), now)}
    query, after = Filter(**where, **bounds), 0
    while rows := ledger.audit(query, after_seq=after, limit=1000):
        yield from (json.dumps(event_dict(row), separators=(",", ":"), ensure_ascii=False) for row in rows)
        after = rows[-1].seq


def audit_verify(
    file: Annotated[Optional[Path], typer.Option("--file", "-f", help="Verify a JSON Lines export offline.")] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DbOpt = None,
    url: UrlOpt = DEFAULT_URL,
    token_file: TokenFileOpt = None,
    token_command: TokenCmdOpt = None,
) -> None:
    """Walk the hash chain (the database, an export file, or the broker's API); exit 1 naming the first bad row."""
    from broker.ledger import verify_export

    if file is not None:
        result, gaps = verify_export(json.loads(line) for line in file.read_text().splitlines() if line.strip())
        report = {**result.__dict__, "gaps": gaps}
    elif (ledger := _offline(config, data_dir, database_url)) is not None:
        report = ledger.verify().__dict__
    else:
        report = Remote(url, token_file, token_command).call("GET", "/v1/audit/verify")
    typer.echo(json.dumps(report))
    if not report["ok"]:
        bad = (inert(report["first_bad_seq"]), ": ", inert(report["problem"]))
        _say("TAMPERED: first bad row seq=", *bad, console_=errors)
        raise typer.Exit(1)


# --- report ---------------------------------------------------------------------------------


@report_app.command("blast-radius")
def report_blast_radius(
    subject: SubjectOpt = None,
    subject_glob: GlobOpt = None,
    since: Annotated[str, typer.Option("--since", help="ISO 8601, epoch seconds, or ago: 24h.")] = "24h",
    until: UntilOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DbOpt = None,
    url: UrlOpt = DEFAULT_URL,
    token_file: TokenFileOpt = None,
    token_command: TokenCmdOpt = None,
) -> None:
    """What a subject reached in a window: boundaries, scopes, live and revoked grants."""
    ledger = _offline(config, data_dir, database_url)
    if ledger is not None:
        from broker.config import instant
        from broker.grants.operations import blast_radius
        from broker.ledger import Filter

        now = time.time()
        who = Filter(subject=subject, subject_glob=subject_glob)
        report = blast_radius(ledger, who, instant(since, now) or 0.0, instant(until, now) or now, now)
    else:
        params = _params(subject=subject, subject_glob=subject_glob, since=since, until=until)
        report = Remote(url, token_file, token_command).call("GET", "/v1/reports/blast-radius", params=params)
    if as_json:
        typer.echo(json.dumps(report))
        return
    _print_report(report)


def _print_report(report: dict[str, Any]) -> None:
    totals = report["totals"]
    counts = ", ".join(f"{totals[k]} {k}" for k in ("grants", "live", "revoked", "pending", "denied"))
    _say(Text(inert(report["subject"]).plain, style="bold"), " from ", inert(report["since"][:19]), " to ",
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


def register(app: typer.Typer, audit_app: typer.Typer) -> None:
    """Add the operator commands to the `broker` command."""
    app.add_typer(grants_app, name="grants")
    app.add_typer(report_app, name="report")
    for command in (revoke, freeze, unfreeze, freezes):
        app.command(command.__name__)(command)
    audit_app.command("tail")(audit_tail)
    audit_app.command("export")(audit_export)
    audit_app.command("verify")(audit_verify)
