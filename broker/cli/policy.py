"""`broker policy test|diff|explain`: check a policy change before it ships (CI-friendly exit codes, JSON).

Decisions here are the broker's own: the same compiled policy, the same scope and TTL checks as
issuance (broker/grants/service.py), so a case that passes here is decided the same way live.
Exit codes: 0 all cases pass / no decision changes / allowed; 1 a case fails / decisions change /
denied; 2 the input is bad (a policy that does not compile, a malformed cases file).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer
import yaml
from pydantic import Field, ValidationError

from broker.config import BoundaryConfig, Duration, Settings, Strict
from broker.errors import BrokerError, ConfigError, PolicyDenied, UnknownBoundary
from broker.policy.engine import Policy, Rule

policy_app = typer.Typer(help="Test, compare and explain policies before they ship.", no_args_is_help=True)
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="Broker config: boundaries, attestors.")]
# the word every command uses (json|table); `text`, this group's first word for the human form, still works
OutputOpt = Annotated[Literal["table", "json", "text"], typer.Option("--output", "-o", help="table or json.")]
CasesOpt = Annotated[Optional[Path], typer.Option("--cases", help="Also list the cases whose decision changes.")]
AgainstOpt = Annotated[bool, typer.Option("--against-ledger", help="List the live grants the new policy withdraws.")]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="With --against-ledger: the data directory.")]
DbOpt = Annotated[Optional[str], typer.Option("--database-url", help="With --against-ledger: the ledger URL.")]
EXPECT = re.compile(r"^(allow|deny)(?:\(([a-z_]+)\))?$")


class Case(Strict):
    """One request and the decision the policy must give it."""

    name: str | None = None
    subject: str
    attestor: str
    claims: dict[str, Any] = Field(default_factory=dict)
    boundary: str
    scopes: list[str] = Field(min_length=1)
    ttl: Duration | Literal["max"] | None = None
    expect: str = Field(pattern=EXPECT.pattern)  # allow | deny | deny(code)
    max_ttl: Duration | None = None  # with allow: the cap the request must get


class Cases(Strict):
    cases: list[Case] = Field(min_length=1)


@dataclass(frozen=True)
class Outcome:
    """What the broker would answer: allow with a TTL cap, or deny with a stable code; and which rule decided."""

    decision: Literal["allow", "deny"]
    code: str | None
    max_ttl: int | None
    rule: str | None
    reason: str


def evaluate(policy: Policy, boundaries: Mapping[str, BoundaryConfig], request: Case) -> Outcome:
    """Decide one request as issuance does (boundary, own scopes, policy, TTL cap); no ledger, no backend."""
    from broker.grants.service import granted_ttl, own_scopes  # the issuing path's own checks

    rule = None
    try:
        boundary = boundaries.get(request.boundary)
        if boundary is None:
            raise UnknownBoundary(f"boundary {request.boundary!r} is not configured")
        scopes = own_scopes(boundary, request.scopes)
        decision = policy.decide(attestor=request.attestor, subject=request.subject, claims=request.claims,
                                 boundary=boundary.name, scopes=frozenset(scopes))  # fmt: skip
        rule = decision.rule
        if not decision.allowed:
            raise PolicyDenied(decision.reason)
        cap = min(decision.max_ttl or boundary.max_ttl, boundary.max_ttl)
        granted_ttl(request.ttl, boundary, cap)
        return Outcome("allow", None, cap, rule, "allowed")
    except BrokerError as exc:
        return Outcome("deny", exc.code, None, rule, exc.detail)


def check(case: Case, outcome: Outcome) -> str | None:
    """Why the outcome is not what the case expects; None when it is."""
    want, code = EXPECT.fullmatch(case.expect).groups()  # type: ignore[union-attr]
    got = f"{outcome.decision}({outcome.code})" if outcome.code else outcome.decision
    if want != outcome.decision or (code and code != outcome.code):
        return f"expected {case.expect}, got {got}: {outcome.reason}"
    if case.max_ttl is not None and outcome.max_ttl != case.max_ttl:
        return f"expected max_ttl {case.max_ttl}s, got {outcome.max_ttl}s"
    return None


# --- commands -----------------------------------------------------------------------------------


@policy_app.command("test")
def policy_test(
    policy_file: Annotated[Path, typer.Argument(help="The policy YAML to test.")],
    cases_file: Annotated[Path, typer.Argument(help="Cases YAML: a `cases:` list.")],
    config: ConfigOpt = None,
    output: OutputOpt = "table",
) -> None:
    """Run every case against the policy; exit 1 if any fails, naming the rule that decided."""
    settings = _settings(config)
    policy, cases = _compile(policy_file, settings), _cases(cases_file)
    results = []
    for index, case in enumerate(cases):
        outcome = evaluate(policy, _boundaries(settings), case)
        failure = check(case, outcome)
        row = {"case": case.name or f"cases[{index}]", "failure": failure, **asdict(outcome)}
        if failure:  # the rules that matched the subject, and what each lacked: why it fell as it did
            row["matched_rules"] = [f"{rule_id}: {verdict}" for rule_id, verdict in _explain(policy, case)
                                    if not verdict.startswith("does not match")]  # fmt: skip
        results.append(row)
    failed = [r for r in results if r["failure"]]
    if output == "json":
        typer.echo(json.dumps({"policy_revision": policy.digest, "passed": len(results) - len(failed),
                               "failed": len(failed), "results": results}))  # fmt: skip
    else:
        for row in results:
            verdict = f"FAIL  {row['failure']} (rule {row['rule'] or '-'})" if row["failure"] else "ok"
            typer.echo(f"{_safe(row['case'])}: {_safe(verdict)}")
            for line in row.get("matched_rules", []):
                typer.echo(f"    {_safe(line)}")
        typer.echo(f"{len(results) - len(failed)} passed, {len(failed)} failed (policy {policy.digest[:12]})")
    raise typer.Exit(1 if failed else 0)


@policy_app.command("diff")
def policy_diff(
    old_file: Annotated[Path, typer.Argument(help="The policy in force.")],
    new_file: Annotated[Path, typer.Argument(help="The policy about to ship.")],
    config: ConfigOpt = None,
    cases_file: CasesOpt = None,
    against_ledger: AgainstOpt = False,
    data_dir: DataDirOpt = None,
    database_url: DbOpt = None,
    output: OutputOpt = "table",
) -> None:
    """What changes between two policies: rules, the decisions of the cases, the live grants withdrawn; exit 1 if any."""
    settings = _settings(config, data_dir, database_url)
    old, new = _compile(old_file, settings), _compile(new_file, settings)
    report: dict[str, Any] = {"old_revision": old.digest, "new_revision": new.digest, "rules": rule_changes(old, new)}
    if cases_file is not None:
        report["decisions"] = [change for case in _cases(cases_file)
                               if (change := _decision_change(case, old, new, _boundaries(settings)))]  # fmt: skip
    if against_ledger:
        report["withdrawn"] = _withdrawn(settings, old, new)
    changed = any(report.get(key) for key in ("rules", "decisions", "withdrawn"))
    typer.echo(json.dumps(report) if output == "json" else _diff_text(report))
    raise typer.Exit(1 if changed else 0)


@policy_app.command("explain")
def policy_explain(
    subject: Annotated[str, typer.Option("--subject", help="The subject, taken literally.")],
    boundary: Annotated[str, typer.Option("--boundary")],
    scopes: Annotated[list[str], typer.Option("--scopes", help="Scopes (repeat, or comma-separated).")],
    attestor: Annotated[Optional[str], typer.Option("--attestor", help="Default: the config's only attestor.")] = None,
    claim: Annotated[Optional[list[str]], typer.Option("--claim", help="A claim as KEY=VALUE (repeat).")] = None,
    ttl: Annotated[Optional[str], typer.Option("--ttl", help="Requested TTL: seconds, 10m, or max.")] = None,
    policy_file: Annotated[Optional[Path], typer.Option("--policy", help="Policy YAML (default: the config's).")] = None,
    config: ConfigOpt = None,
    output: OutputOpt = "table",
) -> None:
    """Every rule in order and what it did for this request, then the decision; exit 1 when denied."""
    settings = _settings(config)
    policy = _compile(policy_file, settings) if policy_file else _configured_policy(settings)
    case = _explain_case(settings, subject, boundary, scopes, attestor, claim or [], ttl)
    outcome = evaluate(policy, _boundaries(settings), case)
    rules = [{"rule": rule_id, "verdict": verdict} for rule_id, verdict in _explain(policy, case)]
    if output == "json":
        typer.echo(json.dumps({"policy_revision": policy.digest, "rules": rules, **asdict(outcome)}))
    else:
        for index, row in enumerate(rules):
            typer.echo(f"{index + 1}. {_safe(row['rule'])}: {_safe(row['verdict'])}")
        detail = f"max_ttl {outcome.max_ttl}s" if outcome.decision == "allow" else f"{outcome.code}: {outcome.reason}"
        typer.echo(_safe(f"decision: {outcome.decision} by rule {outcome.rule or '-'} ({detail})"))
    raise typer.Exit(0 if outcome.decision == "allow" else 1)


def _explain(policy: Policy, case: Case) -> list[tuple[str, str]]:
    scopes = frozenset(scope.rpartition(":")[2] for scope in case.scopes)
    return policy.explain(attestor=case.attestor, subject=case.subject, claims=case.claims, boundary=case.boundary,
                          scopes=scopes)  # fmt: skip


# --- diff -------------------------------------------------------------------------------------


def rule_changes(old: Policy, new: Policy) -> list[dict[str, Any]]:
    """Per rule id: added, removed, or what changed (match, scopes and TTL caps per boundary, roles)."""
    changes = []
    for rule_id in dict.fromkeys([r.id for r in old.rules] + [r.id for r in new.rules]):
        before, after = old.rule(rule_id), new.rule(rule_id)
        if before is None or after is None:
            changes.append({"rule": rule_id, "change": "added" if before is None else "removed"})
        elif details := _rule_details(before, after):
            changes.append({"rule": rule_id, "change": "changed", "details": details})
    return changes


def _rule_details(before: Rule, after: Rule) -> list[str]:
    details = [f"name {before.name} -> {after.name}"] if before.name != after.name else []
    for what in ("attestor", "subject_text", "claims_text"):
        if getattr(before, what) != getattr(after, what):
            details.append(f"match.{what.removesuffix('_text')} {getattr(before, what)!r} -> {getattr(after, what)!r}")
    for boundary in sorted(before.allows.keys() | after.allows.keys()):
        was, now = before.allows.get(boundary), after.allows.get(boundary)
        if was is None or now is None:
            details.append(f"{boundary}: {'opened' if was is None else 'closed'}")
            continue
        for verb, scopes in (("adds", now.scopes - was.scopes), ("removes", was.scopes - now.scopes)):
            details += [f"{boundary}: {verb} scopes {', '.join(sorted(scopes))}"] if scopes else []
        details += [f"{boundary}: max_ttl {was.max_ttl}s -> {now.max_ttl}s"] if was.max_ttl != now.max_ttl else []
    if before.roles != after.roles:
        details.append(f"roles {sorted(before.roles)} -> {sorted(after.roles)}")
    return details


def _decision_change(case: Case, old: Policy, new: Policy, boundaries: Mapping[str, BoundaryConfig]) -> dict | None:
    was, now = evaluate(old, boundaries, case), evaluate(new, boundaries, case)
    if (was.decision, was.code, was.max_ttl) == (now.decision, now.code, now.max_ttl):
        return None
    return {"case": case.name or case.subject, "old": asdict(was), "new": asdict(now)}


def _withdrawn(settings: Settings, old: Policy, new: Policy) -> list[dict[str, Any]]:
    """The live grants a reload from `old` to `new` would withdraw (the broker's own rule, withdrawal.py)."""
    from broker.app import open_ledger
    from broker.grants.withdrawal import still_allowed
    from broker.ledger import ACTIVE, Filter

    ledger, rows, after = open_ledger(settings), [], None
    while page := ledger.queries.inventory(Filter(status=ACTIVE), after=after, limit=1000):
        rows += [{"grant_id": g.id, "subject": g.subject, "boundary": g.boundary, "scopes": g.scope_list,
                  "rule": g.rule} for g in page if not still_allowed(g, old, new)]  # fmt: skip
        after = (page[-1].issued_at, page[-1].id)
    return rows


def _diff_text(report: dict[str, Any]) -> str:
    lines = [f"policy {report['old_revision'][:12]} -> {report['new_revision'][:12]}"]
    for change in report["rules"]:
        lines.append(f"rule {change['rule']}: {change['change']}")
        lines += [f"  {detail}" for detail in change.get("details", [])]
    for change in report.get("decisions", []):
        old, new = change["old"], change["new"]
        lines.append(f"case {change['case']}: {_verdict(old)} -> {_verdict(new)}")
    if "withdrawn" in report:
        lines.append(f"{len(report['withdrawn'])} live grants would be withdrawn")
        for grant in report["withdrawn"]:
            lines.append(f"  {grant['grant_id']} {grant['subject']} {grant['boundary']} (rule {grant['rule'] or '-'})")
    if len(lines) == 1:
        lines.append("no changes")
    return "\n".join(_safe(line) for line in lines)


def _verdict(outcome: dict[str, Any]) -> str:
    if outcome["decision"] == "allow":
        return f"allow (max_ttl {outcome['max_ttl']}s, rule {outcome['rule']})"
    return f"deny({outcome['code']})"


# --- inputs -----------------------------------------------------------------------------------


def _settings(config: Path | None, data_dir: Path | None = None, database_url: str | None = None) -> Settings:
    from broker.cli.options import settings_or_exit

    return settings_or_exit(config, data_dir, database_url)


def _boundaries(settings: Settings) -> dict[str, BoundaryConfig]:
    return {b.name: b for b in settings.boundaries}


def _compile(path: Path, settings: Settings) -> Policy:
    from broker.policy.model import compile_policy
    from broker.policy.source import read_policy_file

    try:
        data = read_policy_file(path)
        return compile_policy(data, source=str(path), boundaries=settings.boundaries,
                              attestors={a.name for a in settings.attestors} | {a.name for a in settings.x509_attestors})  # fmt: skip
    except ConfigError as exc:
        _fail(exc.detail)


def _configured_policy(settings: Settings) -> Policy:
    from broker.policy.model import compile_policy
    from broker.policy.source import INLINE_SOURCE

    if settings.policy_file is not None:
        return _compile(settings.policy_file, settings)
    try:
        return compile_policy(settings.policy or {}, source=INLINE_SOURCE, boundaries=settings.boundaries,
                              attestors={a.name for a in settings.attestors} | {a.name for a in settings.x509_attestors})  # fmt: skip
    except ConfigError as exc:
        _fail(exc.detail)


def _cases(path: Path) -> list[Case]:
    try:
        return Cases.model_validate(yaml.safe_load(path.read_text())).cases
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        _fail(f"{path}: not a valid cases file: {exc}")


def _explain_case(settings: Settings, subject: str, boundary: str, scopes: list[str], attestor: str | None,
                  claims: list[str], ttl: str | None) -> Case:  # fmt: skip
    if attestor is None:
        names = [a.name for a in settings.attestors]
        if len(names) != 1:
            _fail(f"name the attestor with --attestor (the config has: {', '.join(names) or 'none'})")
        attestor = names[0]
    pairs = [item.partition("=") for item in claims]
    if any(not sep for _, sep, _ in pairs):
        _fail("--claim takes KEY=VALUE")
    try:
        return Case(subject=subject, attestor=attestor, claims={k: v for k, _, v in pairs}, boundary=boundary,
                    scopes=[s for item in scopes for s in item.split(",") if s], ttl=ttl, expect="allow")  # fmt: skip
    except ValidationError as exc:
        _fail(f"bad request: {exc}")


def _fail(message: str) -> None:
    typer.echo(f"error: {_safe(message)}", err=True)
    raise typer.Exit(2)


def _safe(text: str) -> str:
    """Policy, cases and ledger text printed as inert ASCII: no control or escape character reaches the terminal."""
    return "".join(ch if 32 <= ord(ch) < 127 or ch == "\n" else f"\\u{ord(ch):04x}" for ch in str(text))


def register(app: typer.Typer) -> None:
    app.add_typer(policy_app, name="policy")
