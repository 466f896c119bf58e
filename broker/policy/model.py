"""Policy schema (the YAML shape) and its compilation, once, into an immutable `Policy`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from broker.config import NAME, BoundaryConfig, Duration, Strict
from broker.errors import ConfigError
from broker.glob import compile_glob, glob_problem
from broker.policy.engine import Allowance, Policy, Rule, claim_texts

Role = Literal["operator", "auditor", "resource_server", "signal_receiver"]
_PYDANTIC_MESSAGES = {"extra_forbidden": "unknown key", "missing": "required"}
# Subjects of unrelated shapes (Kubernetes, GitHub Actions, SPIFFE, OIDC URLs and e-mails, dev, opaque
# ids). A pattern about one kind of workload matches at most one of them; a pattern that matches two
# matches nearly everything, however it is spelt (`**`, `?**`, `**:**`, `*?**`, `*`), so it is caught
# by what it matches, not by its text.
CATCH_ALL_PROBES = (
    "system:serviceaccount:x:y",
    "repo:a/b:ref:refs/heads/main",
    "spiffe://td/ns/a/sa/b",
    "https://idp.example/users/1",
    "dev:operator",
    "acct:42",
    "user@example.com",
    "bot@corp.test",
    "zz",
    "0",
    "q-7_r.s",
)
_OPT_IN = "set allow_any_subject: true if that is meant"


class MatchSpec(Strict):
    """Whom a rule applies to; every field given must match."""

    attestor: str | None = None
    subject: str | None = None
    claims: dict[str, Any] = Field(default_factory=dict)

    @field_validator("claims")
    @classmethod
    def _scalar_or_list(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, item in value.items():
            items = item if isinstance(item, list) else [item]
            if not items or not all(isinstance(i, str | int) for i in items):
                raise ValueError(f"claim {key!r}: use a string, number, boolean or a non-empty list of them")
        return value


class AllowSpec(Strict):
    """One boundary a rule opens, with its scopes and TTL cap (default: the boundary's cap)."""

    boundary: str
    scopes: list[str] = Field(min_length=1)
    max_ttl: Duration | None = None


class RuleSpec(Strict):
    """One rule as written in the policy file."""

    name: str = Field(pattern=NAME)
    id: str | None = Field(default=None, pattern=NAME)  # stable across renames; grants record it
    match: MatchSpec = Field(default_factory=MatchSpec)
    allow: list[AllowSpec] = Field(default_factory=list)
    roles: list[Role] = Field(default_factory=list)
    allow_any_subject: bool = False


class PolicySpec(Strict):
    """A whole policy document."""

    rules: list[RuleSpec]


def compile_policy(
    data: Mapping[str, Any],
    *,
    source: str,
    boundaries: Mapping[str, BoundaryConfig] | Iterable[BoundaryConfig],
    attestors: Collection[str],
) -> Policy:
    """Validate and compile a policy document; raise ConfigError listing every problem found."""
    spec = _parse(data, source)
    compiler = _Compiler(source, _by_name(boundaries), frozenset(attestors))
    rules = [compiler.rule(index, rule) for index, rule in enumerate(spec.rules)]
    compiler.check_names(spec.rules)
    warnings = compiler.check_overlaps(spec.rules, rules)
    if not rules:
        warnings.append(f"{source}: rules: empty, so every request is denied")
    if compiler.errors:
        raise ConfigError("\n".join(compiler.errors))
    return Policy(source=source, digest=_digest(spec), rules=tuple(rules), warnings=tuple(warnings))




@dataclass
class _Compiler:
    """Checks rules against the configured boundaries and attestors, collecting every error."""

    source: str
    boundaries: Mapping[str, BoundaryConfig]
    attestors: frozenset[str]
    errors: list[str] = field(default_factory=list)

    def fail(self, where: str, at: str, message: str) -> None:
        self.errors.append(f"{self.source}: {where}: {at}: {message}")

    def rule(self, index: int, spec: RuleSpec) -> Rule:
        where = _where(index, spec.name)
        self._check_match(where, spec)
        if not spec.allow and not spec.roles:
            self.fail(where, "allow", "empty and the rule has no roles, so it grants nothing")
        match = spec.match
        return Rule(
            name=spec.name,
            attestor=match.attestor,
            subject=compile_glob(match.subject) if match.subject is not None else None,
            claims=tuple((key, tuple(map(compile_glob, claim_texts(v)))) for key, v in match.claims.items()),
            allows=MappingProxyType(self._allows(where, spec.allow)),
            roles=frozenset(spec.roles),
            id=spec.id or spec.name,
            subject_text=match.subject,
            claims_text=tuple(sorted((key, tuple(sorted(set(claim_texts(v))))) for key, v in match.claims.items())),
        )

    def _check_match(self, where: str, spec: RuleSpec) -> None:
        match = spec.match
        if match.attestor is not None and match.attestor not in self.attestors:
            known = _names(self.attestors)
            self.fail(where, "match.attestor", f"unknown attestor {match.attestor!r} (has: {known})")
        if spec.roles and match.attestor is None:
            message = "required when the rule grants roles, or a same-named subject of another attestor gets them"
            self.fail(where, "match.attestor", message)
        globs_ok = match.subject is None or self._check_glob(where, "match.subject", match.subject)
        for key, value in match.claims.items():
            for text in claim_texts(value):
                globs_ok = self._check_glob(where, f"match.claims.{key}", text) and globs_ok
        if globs_ok and not spec.allow_any_subject:
            self._check_not_catch_all(where, match)

    def _check_not_catch_all(self, where: str, match: MatchSpec) -> None:
        """A rule must narrow whom it matches: by a subject, or by claims that not every value meets."""
        if match.subject is not None:
            if _catch_all(match.subject):
                even = " and ".join(map(repr, _probe_hits(match.subject)))
                message = f"pattern {match.subject!r} matches every subject (even {even})"
                self.fail(where, "match.subject", f"{message}; {_OPT_IN}")
        elif not match.claims:
            message = "no subject and no claims, so the rule matches every subject the attestors accept"
            self.fail(where, "match", f"{message}; {_OPT_IN}")
        elif all(any(map(_catch_all, claim_texts(v))) for v in match.claims.values()):
            key = next(iter(match.claims))
            message = "no subject, and every claim pattern matches any value, so the rule matches every subject"
            self.fail(where, f"match.claims.{key}", f"{message}; {_OPT_IN}")

    def _check_glob(self, where: str, at: str, pattern: str) -> bool:
        problem = glob_problem(pattern)
        if problem:
            self.fail(where, at, f"bad pattern {pattern!r}: {problem}")
        return problem is None

    def _allows(self, where: str, allow: list[AllowSpec]) -> dict[str, Allowance]:
        allows: dict[str, Allowance] = {}
        seen: set[str] = set()
        for index, item in enumerate(allow):
            at = f"allow[{index}]"
            boundary = self.boundaries.get(item.boundary)
            if item.boundary in seen:
                self.fail(where, f"{at}.boundary", f"boundary {item.boundary!r} is listed twice; merge the entries")
            elif boundary is None:
                known = _names(self.boundaries)
                self.fail(where, f"{at}.boundary", f"unknown boundary {item.boundary!r} (has: {known})")
            else:
                allows[item.boundary] = self._allowance(where, at, item, boundary)
            seen.add(item.boundary)
        return allows

    def _allowance(self, where: str, at: str, item: AllowSpec, boundary: BoundaryConfig) -> Allowance:
        for scope in item.scopes:
            if scope not in boundary.scopes:
                known = f"has: {_names(boundary.scopes)}"
                self.fail(where, f"{at}.scopes", f"unknown scope {scope!r} in boundary {boundary.name!r} ({known})")
        ttl = item.max_ttl or boundary.max_ttl
        if ttl > boundary.max_ttl:
            cap = f"{boundary.max_ttl}s"
            self.fail(where, f"{at}.max_ttl", f"{ttl}s is above the cap of boundary {boundary.name!r} ({cap})")
        return Allowance(scopes=frozenset(item.scopes), max_ttl=ttl)

    def check_names(self, specs: list[RuleSpec]) -> None:
        first: dict[str, int] = {}
        ids: dict[str, int] = {}
        for index, spec in enumerate(specs):
            earlier = first.setdefault(spec.name, index)
            if earlier != index:
                self.fail(_where(index, spec.name), "name", f"duplicate of rules[{earlier}]; rule names must be unique")
            # ids are what grants, audit and revocations name: one rule each, explicit or derived from the name
            same = ids.setdefault(spec.id or spec.name, index)
            if same != index and earlier == index:
                self.fail(_where(index, spec.name), "id", f"id {spec.id or spec.name!r} is also rules[{same}]'s id")

    def check_overlaps(self, specs: list[RuleSpec], rules: list[Rule]) -> list[str]:
        """Identical matches are errors; a later rule widening an overlapping earlier one is a warning."""
        warnings: list[str] = []
        for j, later in enumerate(specs):
            for i, earlier in enumerate(specs[:j]):
                if _match_key(earlier.match) == _match_key(later.match):
                    message = f"identical to rules[{i}] ({earlier.name}); merge the two rules into one"
                    self.fail(_where(j, later.name), "match", message)
                elif _may_overlap(earlier.match, later.match):
                    warnings += _widenings(self.source, (i, rules[i]), (j, rules[j]))
        return warnings


def _parse(data: Mapping[str, Any], source: str) -> PolicySpec:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: the top level must be a mapping with a 'rules' list")
    try:
        return PolicySpec.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError("\n".join(_describe(err, data, source) for err in exc.errors())) from None


def _describe(err: Any, data: Mapping[str, Any], source: str) -> str:
    loc = err["loc"]
    message = _PYDANTIC_MESSAGES.get(err["type"]) or err["msg"].removeprefix("Value error, ")
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        return f"{source}: {_where(loc[1], _raw_name(data, loc[1]))}: {_dotted(loc[2:]) or '(rule)'}: {message}"
    return f"{source}: {_dotted(loc) or '(top level)'}: {message}"


def _raw_name(data: Mapping[str, Any], index: int) -> str | None:
    rules = data.get("rules")
    rule = rules[index] if isinstance(rules, list) and index < len(rules) else None
    name = rule.get("name") if isinstance(rule, Mapping) else None
    return name if isinstance(name, str) else None


def _dotted(loc: tuple[Any, ...]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def _where(index: int, name: str | None) -> str:
    return f"rules[{index}] ({name})" if name else f"rules[{index}]"


def _names(items: Iterable[str]) -> str:
    return ", ".join(sorted(items)) or "none configured"


def _by_name(boundaries: Mapping[str, BoundaryConfig] | Iterable[BoundaryConfig]) -> Mapping[str, BoundaryConfig]:
    # Settings keeps boundaries as a list; accept that as well as a name → boundary map.
    return boundaries if isinstance(boundaries, Mapping) else {b.name: b for b in boundaries}


def _catch_all(pattern: str) -> bool:
    return len(_probe_hits(pattern, limit=2)) >= 2


def _probe_hits(pattern: str, limit: int = 2) -> list[str]:
    regex = compile_glob(pattern)
    return [probe for probe in CATCH_ALL_PROBES if regex.fullmatch(probe)][:limit]


def _match_key(match: MatchSpec) -> tuple[Any, ...]:
    claims = sorted((key, tuple(sorted(set(claim_texts(v))))) for key, v in match.claims.items())
    return (match.attestor, match.subject, tuple(claims))


def _may_overlap(a: MatchSpec, b: MatchSpec) -> bool:
    """Whether two matches can accept the same identity (a cheap, textual over-approximation)."""
    if a.attestor and b.attestor and a.attestor != b.attestor:
        return False
    if not _globs_overlap(a.subject, b.subject):
        return False
    shared = a.claims.keys() & b.claims.keys()
    return all(
        any(_globs_overlap(x, y) for x in claim_texts(a.claims[key]) for y in claim_texts(b.claims[key]))
        for key in shared
    )


def _globs_overlap(p: str | None, q: str | None) -> bool:
    if p is None or q is None:
        return True
    return p == q or bool(compile_glob(p).fullmatch(q) or compile_glob(q).fullmatch(p))


def _widenings(source: str, earlier: tuple[int, Rule], later: tuple[int, Rule]) -> list[str]:
    (i, old_rule), (j, new_rule) = earlier, later
    warnings = []
    for boundary in sorted(old_rule.allows.keys() & new_rule.allows.keys()):
        old, new = old_rule.allows[boundary], new_rule.allows[boundary]
        wider = [f"adds scopes {', '.join(sorted(new.scopes - old.scopes))}"] if new.scopes - old.scopes else []
        wider += [f"raises max_ttl {old.max_ttl}s to {new.max_ttl}s"] if new.max_ttl > old.max_ttl else []
        if wider:
            warnings.append(
                f"{source}: rules[{j}] ({new_rule.name}) can match the same subjects as rules[{i}] "
                f"({old_rule.name}) and widens boundary {boundary!r}: {'; '.join(wider)}"
            )
    return warnings


def _digest(spec: PolicySpec) -> str:
    # Hash the validated form, so comments, key order and `10m` vs `600` do not change the digest.
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
