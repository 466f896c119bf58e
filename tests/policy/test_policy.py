"""Policy: compile-time errors and warnings, deny-by-default decisions, and live reload."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.config import BoundaryConfig
from broker.errors import ConfigError
from broker.policy import Decision, Policy, PolicySource, compile_policy
from tests.support.wait import wait_until

BOUNDARIES = {
    "orders-db": BoundaryConfig(name="orders-db", backend="jwt", scopes=["read", "write"], max_ttl=900),
    "kv:payments": BoundaryConfig(name="kv:payments", backend="jwt", scopes=["read", "write", "admin"], max_ttl=3600),
}
ATTESTORS = {"k8s", "github", "spire"}

POLICY_YAML = """
rules:
  - name: payments-workers
    match:
      attestor: k8s
      subject: "system:serviceaccount:pay*:*"
      claims: {namespace: payments}
    allow:
      - {boundary: orders-db, scopes: [read], max_ttl: 10m}
  - name: payments-writer
    match: {attestor: k8s, subject: "system:serviceaccount:payments:writer"}
    allow:
      - {boundary: orders-db, scopes: [read, write], max_ttl: 5m}
  - name: ci-main
    match:
      attestor: github
      subject: "repo:acme/**"
      claims:
        ref: ["refs/heads/main", "refs/tags/v*"]
        environment_protected: true
        repository_owner_id: 42
    allow:
      - {boundary: "kv:payments", scopes: [read, write]}
  - name: spiffe-pay
    match: {attestor: spire, subject: "spiffe://acme.internal/ns/?ay/sa/*"}
    allow:
      - {boundary: "kv:payments", scopes: [read], max_ttl: 60}
  - name: kv-reader
    match: {attestor: k8s, claims: {groups: "team-*"}}
    allow:
      - {boundary: "kv:payments", scopes: [read], max_ttl: 2m}
  - name: kv-writer
    match: {attestor: k8s, subject: "system:serviceaccount:kv:*"}
    allow:
      - {boundary: "kv:payments", scopes: [write], max_ttl: 2m}
  - name: ops
    match: {attestor: github, subject: "repo:acme/ops:ref:refs/heads/main"}
    roles: [operator, auditor]
"""

SA = "system:serviceaccount:"
CI_CLAIMS = {"ref": "refs/heads/main", "environment_protected": True, "repository_owner_id": 42}


def compile_(data: dict[str, Any], source: str = "policy.yaml") -> Policy:
    return compile_policy(data, source=source, boundaries=BOUNDARIES, attestors=ATTESTORS)


def rule(name: str = "r", **fields: Any) -> dict[str, Any]:
    """A valid rule with a narrow subject; keyword arguments replace its fields (None drops one)."""
    base: dict[str, Any] = {
        "name": name,
        "match": {"subject": f"{SA}default:{name}"},
        "allow": [{"boundary": "orders-db", "scopes": ["read"]}],
    }
    base.update(fields)
    return {key: value for key, value in base.items() if value is not None}


@pytest.fixture(scope="module")
def policy() -> Policy:
    return compile_(yaml.safe_load(POLICY_YAML))


# --- decide -------------------------------------------------------------------------------------

ALLOW = "allowed"
NO_SUBJECT = "no rule matches subject"

DECIDE_CASES = [
    # id, attestor, subject, claims, boundary, scopes, (allowed, rule, max_ttl, reason)
    ("segment-glob", "k8s", f"{SA}payments:api", {"namespace": "payments"}, "orders-db", {"read"},
     (True, "payments-workers", 600, ALLOW)),
    ("star-stops-at-colon", "k8s", f"{SA}payments:x:y", {"namespace": "payments"}, "orders-db", {"read"},
     (False, None, None, NO_SUBJECT)),
    ("anchored-prefix", "k8s", f"x{SA}payments:api", {"namespace": "payments"}, "orders-db", {"read"},
     (False, None, None, NO_SUBJECT)),
    ("wrong-attestor", "github", f"{SA}payments:api", {"namespace": "payments"}, "orders-db", {"read"},
     (False, None, None, NO_SUBJECT)),
    ("claim-missing", "k8s", f"{SA}payments:api", {}, "orders-db", {"read"},
     (False, None, None, NO_SUBJECT)),
    ("claim-differs", "k8s", f"{SA}payments:api", {"namespace": "billing"}, "orders-db", {"read"},
     (False, None, None, NO_SUBJECT)),
    ("claim-nested-object", "k8s", f"{SA}payments:api", {"namespace": {"name": "payments"}}, "orders-db",
     {"read"}, (False, None, None, NO_SUBJECT)),
    ("boundary-not-allowed", "k8s", f"{SA}payments:api", {"namespace": "payments"}, "kv:payments", {"read"},
     (False, None, None, "boundary not allowed")),
    ("unknown-boundary", "k8s", f"{SA}payments:api", {"namespace": "payments"}, "nope", {"read"},
     (False, None, None, "boundary not allowed")),
    ("scope-not-allowed", "k8s", f"{SA}payments:api", {"namespace": "payments"}, "orders-db", {"write"},
     (False, None, None, "scopes not allowed: write")),
    ("no-scopes", "k8s", f"{SA}payments:api", {"namespace": "payments"}, "orders-db", set(),
     (False, None, None, "no scopes requested")),
    ("garbage-scope-not-echoed", "k8s", f"{SA}payments:api", {"namespace": "payments"}, "orders-db",
     {"read", "x'; DROP"}, (False, None, None, "scopes not allowed: <invalid>")),
    ("largest-ttl-wins", "k8s", f"{SA}payments:writer", {"namespace": "payments"}, "orders-db", {"read"},
     (True, "payments-workers", 600, ALLOW)),
    ("only-rule-with-all-scopes", "k8s", f"{SA}payments:writer", {"namespace": "payments"}, "orders-db",
     {"read", "write"}, (True, "payments-writer", 300, ALLOW)),
    ("no-union-across-rules", "k8s", f"{SA}kv:job", {"groups": ["team-a"]}, "kv:payments", {"read", "write"},
     (False, None, None, "scopes not allowed: read")),
    ("union-parts-each-allowed", "k8s", f"{SA}kv:job", {"groups": ["team-a"]}, "kv:payments", {"write"},
     (True, "kv-writer", 120, ALLOW)),
    ("list-claim-any-element", "k8s", f"{SA}other:job", {"groups": ["ops", "team-x"]}, "kv:payments", {"read"},
     (True, "kv-reader", 120, ALLOW)),
    ("list-claim-no-element", "k8s", f"{SA}other:job", {"groups": ["ops"]}, "kv:payments", {"read"},
     (False, None, None, NO_SUBJECT)),
    ("double-star-spans-segments", "github", "repo:acme/team/api:ref:refs/heads/main", CI_CLAIMS,
     "kv:payments", {"read", "write"}, (True, "ci-main", 3600, ALLOW)),
    ("double-star-anchored", "github", "repo:acmex/api:ref:refs/heads/main", CI_CLAIMS, "kv:payments",
     {"read"}, (False, None, None, NO_SUBJECT)),
    ("policy-list-of-globs", "github", "repo:acme/api", {**CI_CLAIMS, "ref": "refs/tags/v1.2"}, "kv:payments",
     {"read"}, (True, "ci-main", 3600, ALLOW)),
    ("bool-claim-as-string", "github", "repo:acme/api", {**CI_CLAIMS, "environment_protected": "true"},
     "kv:payments", {"read"}, (True, "ci-main", 3600, ALLOW)),
    ("bool-claim-false", "github", "repo:acme/api", {**CI_CLAIMS, "environment_protected": False},
     "kv:payments", {"read"}, (False, None, None, NO_SUBJECT)),
    ("int-claim-as-string", "github", "repo:acme/api", {**CI_CLAIMS, "repository_owner_id": "42"},
     "kv:payments", {"read"}, (True, "ci-main", 3600, ALLOW)),
    ("question-mark-one-char", "spire", "spiffe://acme.internal/ns/pay/sa/worker", {}, "kv:payments", {"read"},
     (True, "spiffe-pay", 60, ALLOW)),
    ("question-mark-not-two", "spire", "spiffe://acme.internal/ns/payy/sa/worker", {}, "kv:payments", {"read"},
     (False, None, None, NO_SUBJECT)),
    ("star-stops-at-slash", "spire", "spiffe://acme.internal/ns/pay/sa/a/b", {}, "kv:payments", {"read"},
     (False, None, None, NO_SUBJECT)),
    ("dot-is-literal", "spire", "spiffe://acmeXinternal/ns/pay/sa/worker", {}, "kv:payments", {"read"},
     (False, None, None, NO_SUBJECT)),
]


@pytest.mark.parametrize(
    ("attestor", "subject", "claims", "boundary", "scopes", "expected"),
    [case[1:] for case in DECIDE_CASES],
    ids=[case[0] for case in DECIDE_CASES],
)
def test_decide(policy: Policy, attestor, subject, claims, boundary, scopes, expected) -> None:
    decision = policy.decide(
        attestor=attestor, subject=subject, claims=claims, boundary=boundary, scopes=frozenset(scopes)
    )
    assert decision == Decision(*expected, revision=policy.digest)


@pytest.mark.parametrize(
    ("attestor", "subject", "expected"),
    [
        ("github", "repo:acme/ops:ref:refs/heads/main", {"operator", "auditor"}),
        ("github", "repo:acme/ops:ref:refs/heads/dev", set()),
        ("k8s", "repo:acme/ops:ref:refs/heads/main", set()),
    ],
    ids=["operator", "other-ref", "other-attestor"],
)
def test_roles(policy: Policy, attestor: str, subject: str, expected: set[str]) -> None:
    assert policy.roles(attestor=attestor, subject=subject, claims={}) == frozenset(expected)


def test_allow_any_subject_opt_in() -> None:
    policy = compile_({"rules": [rule(match={"attestor": "k8s"}, allow_any_subject=True)]})
    decision = policy.decide(attestor="k8s", subject="anything", claims={}, boundary="orders-db",
                             scopes=frozenset({"read"}))
    assert decision.allowed and decision.max_ttl == 900


def test_digest_ignores_formatting_but_not_meaning() -> None:
    one = compile_(yaml.safe_load(POLICY_YAML)).digest
    reformatted = POLICY_YAML.replace("max_ttl: 10m", "max_ttl: 600") + "\n# a comment\n"
    changed = POLICY_YAML.replace("max_ttl: 10m", "max_ttl: 9m")
    assert compile_(yaml.safe_load(reformatted)).digest == one
    assert compile_(yaml.safe_load(changed)).digest != one
    assert len(one) == 64


# --- load errors --------------------------------------------------------------------------------

P = "policy.yaml: rules[0] (r)"

LOAD_ERRORS = [
    ("unknown-boundary", [rule(allow=[{"boundary": "nope", "scopes": ["read"]}])],
     f"{P}: allow[0].boundary: unknown boundary 'nope' (has: kv:payments, orders-db)"),
    ("unknown-scope", [rule(allow=[{"boundary": "orders-db", "scopes": ["read", "admin"]}])],
     f"{P}: allow[0].scopes: unknown scope 'admin' in boundary 'orders-db' (has: read, write)"),
    ("ttl-above-boundary-cap", [rule(allow=[{"boundary": "orders-db", "scopes": ["read"], "max_ttl": "1h"}])],
     f"{P}: allow[0].max_ttl: 3600s is above the cap of boundary 'orders-db' (900s)"),
    ("bad-duration", [rule(allow=[{"boundary": "orders-db", "scopes": ["read"], "max_ttl": "10x"}])],
     f"{P}: allow[0].max_ttl: '10x' is not a duration (use seconds or 30s, 15m, 1h, 1d)"),
    ("empty-scopes", [rule(allow=[{"boundary": "orders-db", "scopes": []}])],
     f"{P}: allow[0].scopes: List should have at least 1 item after validation, not 0"),
    ("boundary-twice", [rule(allow=[{"boundary": "orders-db", "scopes": ["read"]},
                                    {"boundary": "orders-db", "scopes": ["write"]}])],
     f"{P}: allow[1].boundary: boundary 'orders-db' is listed twice; merge the entries"),
    ("unknown-attestor", [rule(match={"attestor": "gitlab", "subject": "x"})],
     f"{P}: match.attestor: unknown attestor 'gitlab' (has: github, k8s, spire)"),
    ("duplicate-names", [rule("r"), rule("r", match={"subject": "other"})],
     "policy.yaml: rules[1] (r): name: duplicate of rules[0]; rule names must be unique"),
    ("unknown-rule-key", [rule(alow=[])], f"{P}: alow: unknown key"),
    ("unknown-match-key", [rule(match={"subjet": "x"})], f"{P}: match.subjet: unknown key"),
    ("unknown-allow-key", [rule(allow=[{"boundary": "orders-db", "scope": ["read"]}])],
     f"{P}: allow[0].scopes: required\n{P}: allow[0].scope: unknown key"),
    ("missing-name", [{"match": {"subject": "x"}, "allow": []}], "policy.yaml: rules[0]: name: required"),
    ("bad-role", [rule(roles=["root"])], f"{P}: roles[0]: Input should be 'operator', 'auditor', 'resource_server' or 'signal_receiver'"),
    ("bad-claim-value", [rule(match={"claims": {"ns": {"a": 1}}})],
     f"{P}: match.claims: claim 'ns': use a string, number, boolean or a non-empty list of them"),
    ("glob-triple-star", [rule(match={"subject": "repo:***"})],
     f"{P}: match.subject: bad pattern 'repo:***': '***' is ambiguous; use '*' (within one segment) "
     "or '**' (anything)"),
    ("glob-empty", [rule(match={"subject": "", "claims": {"ns": "a"}})],
     f"{P}: match.subject: bad pattern '': empty pattern"),
    ("glob-control-char", [rule(match={"claims": {"ns": "a\nb"}})],
     f"{P}: match.claims.ns: bad pattern 'a\\nb': pattern contains control characters"),
    ("grants-nothing", [rule(allow=[])],
     f"{P}: allow: empty and the rule has no roles, so it grants nothing"),
    ("identical-match", [rule("a", match={"subject": "s"}), rule("b", match={"subject": "s"})],
     "policy.yaml: rules[1] (b): match: identical to rules[0] (a); merge the two rules into one"),
]

OPT_IN = "set allow_any_subject: true if that is meant"
NO_NARROWING = f"match: no subject and no claims, so the rule matches every subject the attestors accept; {OPT_IN}"
CLAIMS_ANY = ("match.claims.ns: no subject, and every claim pattern matches any value, so the rule matches every "
              f"subject; {OPT_IN}")


@pytest.mark.parametrize(
    ("rules", "message"), [case[1:] for case in LOAD_ERRORS], ids=[case[0] for case in LOAD_ERRORS]
)
def test_load_error(rules: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        compile_({"rules": rules})
    assert str(caught.value) == message


def subject_any(pattern: str, first: str, second: str) -> str:
    return f"match.subject: pattern {pattern!r} matches every subject (even {first!r} and {second!r}); {OPT_IN}"


K8S, REPO, SPIFFE = "system:serviceaccount:x:y", "repo:a/b:ref:refs/heads/main", "spiffe://td/ns/a/sa/b"
CATCH_ALLS = [
    # id, match, the refusal after "file: rule: "
    ("empty-match", {}, NO_NARROWING),
    ("attestor-only", {"attestor": "k8s"}, NO_NARROWING),
    ("double-star", {"subject": "**"}, subject_any("**", K8S, REPO)),
    ("double-star-with-claims", {"subject": "**", "claims": {"ns": "a"}}, subject_any("**", K8S, REPO)),
    ("one-then-anything", {"subject": "?**"}, subject_any("?**", K8S, REPO)),
    ("anything-colon-anything", {"subject": "**:**"}, subject_any("**:**", K8S, REPO)),
    ("star-one-anything", {"subject": "*?**"}, subject_any("*?**", K8S, REPO)),
    ("anything-slash-anything", {"attestor": "k8s", "subject": "**/**"}, subject_any("**/**", REPO, SPIFFE)),
    ("any-one-segment", {"subject": "*"}, subject_any("*", "user@example.com", "bot@corp.test")),
    ("any-two-segments", {"subject": "*:*"}, subject_any("*:*", "dev:operator", "acct:42")),
    ("any-mail", {"subject": "*@*"}, subject_any("*@*", "user@example.com", "bot@corp.test")),
    ("claim-double-star", {"claims": {"ns": "**"}}, CLAIMS_ANY),
    ("claim-list-with-catch-all", {"claims": {"ns": ["payments", "?*"]}}, CLAIMS_ANY),
]


@pytest.mark.parametrize(
    ("match", "message"), [case[1:] for case in CATCH_ALLS], ids=[case[0] for case in CATCH_ALLS]
)
def test_catch_all_refused_without_opt_in(match: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        compile_({"rules": [rule(match=match)]})
    assert str(caught.value) == f"{P}: {message}"


@pytest.mark.parametrize("match", [case[1] for case in CATCH_ALLS], ids=[case[0] for case in CATCH_ALLS])
def test_catch_all_allowed_when_marked(match: dict[str, Any]) -> None:
    compile_({"rules": [rule(match=match, allow_any_subject=True)]})


@pytest.mark.parametrize(
    "match",
    [
        {"subject": f"{SA}payments:*"},
        {"subject": "repo:acme/**"},
        {"subject": "spiffe://acme.internal/**"},
        {"subject": "dev:*"},
        {"subject": "ops-*"},
        {"subject": "**@example.com"},
        {"attestor": "github", "subject": "repo:*/*:**"},
        {"claims": {"ns": "payments", "team": "**"}},
    ],
    ids=["k8s-namespace", "github-org", "spiffe-trust-domain", "dev-prefix", "name-prefix", "mail-domain",
         "any-repo-any-ref", "one-narrow-claim"],
)
def test_narrow_patterns_load(match: dict[str, Any]) -> None:
    assert compile_({"rules": [rule(match=match)]}).rules[0].name == "r"


ROLE_NEEDS_ATTESTOR = ("match.attestor: required when the rule grants roles, or a same-named subject of another "
                       "attestor gets them")


@pytest.mark.parametrize(
    "fields",
    [
        {"match": {"subject": "ops-alice"}, "roles": ["operator"], "allow": None},
        {"match": {"subject": "audit-*"}, "roles": ["auditor"]},
        {"match": {"claims": {"groups": "sre"}}, "roles": ["operator"], "allow": None},
    ],
    ids=["operator-by-subject", "auditor-beside-allow", "operator-by-claim"],
)
def test_role_rule_must_name_attestor(fields: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as caught:
        compile_({"rules": [rule(**fields)]})
    assert str(caught.value) == f"{P}: {ROLE_NEEDS_ATTESTOR}"


def test_role_goes_only_to_the_named_attestor() -> None:
    policy = compile_({"rules": [rule(match={"attestor": "k8s", "subject": "ops"}, roles=["operator"], allow=None)]})
    assert policy.roles(attestor="k8s", subject="ops", claims={}) == {"operator"}
    assert policy.roles(attestor="github", subject="ops", claims={}) == frozenset()


def test_load_error_from_a_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("rules:\n  - name: ops\n    match: {subject: '?**'}\n    roles: [operator]\n")
    with pytest.raises(ConfigError) as caught:
        PolicySource(path=path, inline=None, boundaries=BOUNDARIES, attestors=ATTESTORS)
    assert str(caught.value).splitlines() == [
        f"{path}: rules[0] (ops): {ROLE_NEEDS_ATTESTOR}",
        f"{path}: rules[0] (ops): {subject_any('?**', K8S, REPO)}",
    ]


def test_error_names_file_rule_and_field_as_documented() -> None:
    rules = [rule("a"), rule("b"), rule("payments", allow=[{"boundary": "orders-db", "scopes": ["admin"]}])]
    with pytest.raises(ConfigError) as caught:
        compile_({"rules": rules})
    assert str(caught.value) == (
        "policy.yaml: rules[2] (payments): allow[0].scopes: unknown scope 'admin' in boundary 'orders-db' "
        "(has: read, write)"
    )


def test_every_error_is_reported_at_once() -> None:
    rules = [rule("a", allow=[{"boundary": "nope", "scopes": ["read"]}]), rule("b", match={"attestor": "x"})]
    with pytest.raises(ConfigError) as caught:
        compile_({"rules": rules})
    lines = str(caught.value).splitlines()
    assert lines[0].startswith("policy.yaml: rules[0] (a): allow[0].boundary: unknown boundary 'nope'")
    assert lines[1].startswith("policy.yaml: rules[1] (b): match.attestor: unknown attestor 'x'")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "policy.yaml: the top level must be a mapping with a 'rules' list"),
        ({}, "policy.yaml: rules: required"),
        ({"rules": [], "rule": []}, "policy.yaml: rule: unknown key"),
        ({"rules": "x"}, "policy.yaml: rules: Input should be a valid list"),
    ],
    ids=["not-a-mapping", "no-rules", "unknown-top-key", "rules-not-a-list"],
)
def test_top_level_errors(data: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        compile_(data)
    assert str(caught.value) == message


# --- warnings -----------------------------------------------------------------------------------

WARNING_CASES = [
    ("later-adds-scope",
     [rule("narrow", match={"subject": f"{SA}pay:*"}),
      rule("wide", match={"subject": f"{SA}pay:api"}, allow=[{"boundary": "orders-db", "scopes": ["read", "write"]}])],
     ["policy.yaml: rules[1] (wide) can match the same subjects as rules[0] (narrow) and widens boundary "
      "'orders-db': adds scopes write"]),
    ("later-raises-ttl",
     [rule("short", match={"subject": f"{SA}pay:api"}, allow=[{"boundary": "orders-db", "scopes": ["read"],
                                                              "max_ttl": 60}]),
      rule("long", match={"subject": f"{SA}*:api"})],
     ["policy.yaml: rules[1] (long) can match the same subjects as rules[0] (short) and widens boundary "
      "'orders-db': raises max_ttl 60s to 900s"]),
    ("claims-only-rule-overlaps",
     [rule("by-claim", match={"claims": {"ns": "pay"}}),
      rule("by-subject", match={"subject": "x"}, allow=[{"boundary": "orders-db", "scopes": ["write"]}])],
     ["policy.yaml: rules[1] (by-subject) can match the same subjects as rules[0] (by-claim) and widens "
      "boundary 'orders-db': adds scopes write"]),
    ("later-narrower",
     [rule("wide", match={"subject": f"{SA}pay:*"}, allow=[{"boundary": "orders-db", "scopes": ["read", "write"]}]),
      rule("narrow", match={"subject": f"{SA}pay:api"})],
     []),
    ("disjoint-subjects",
     [rule("a", match={"subject": f"{SA}pay:*"}),
      rule("b", match={"subject": f"{SA}billing:*"}, allow=[{"boundary": "orders-db", "scopes": ["write"]}])],
     []),
    ("different-attestors",
     [rule("a", match={"attestor": "k8s", "subject": "x"}),
      rule("b", match={"attestor": "github", "subject": "x"},
           allow=[{"boundary": "orders-db", "scopes": ["write"]}])],
     []),
    ("disjoint-claims",
     [rule("a", match={"subject": "x", "claims": {"ns": "pay"}}),
      rule("b", match={"subject": "x", "claims": {"ns": "bill"}},
           allow=[{"boundary": "orders-db", "scopes": ["write"]}])],
     []),
    ("different-boundaries",
     [rule("a", match={"subject": "x*"}),
      rule("b", match={"subject": "xy"}, allow=[{"boundary": "kv:payments", "scopes": ["admin"]}])],
     []),
]


@pytest.mark.parametrize(
    ("rules", "warnings"), [case[1:] for case in WARNING_CASES], ids=[case[0] for case in WARNING_CASES]
)
def test_overlap_warnings(rules: list[dict[str, Any]], warnings: list[str]) -> None:
    assert list(compile_({"rules": rules}).warnings) == warnings


def test_empty_rules_warns_deny_all() -> None:
    policy = compile_({"rules": []})
    assert policy.warnings == ("policy.yaml: rules: empty, so every request is denied",)
    assert not policy.decide(attestor="k8s", subject="x", claims={}, boundary="orders-db",
                             scopes=frozenset({"read"})).allowed


# --- source: load and reload --------------------------------------------------------------------

GOOD = "rules:\n  - name: a\n    match: {subject: x}\n    allow: [{boundary: orders-db, scopes: [read]}]\n"
GOOD_2 = GOOD.replace("[read]", "[read, write]")


def source_at(tmp_path: Path, text: str = GOOD) -> tuple[PolicySource, Path]:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return PolicySource(path=path, inline=None, boundaries=BOUNDARIES, attestors=ATTESTORS), path


def rewrite(path: Path, text: str) -> None:
    # Move mtime forward explicitly: some filesystems keep coarse timestamps.
    path.write_text(text)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))


def allows_write(source: PolicySource) -> bool:
    return source.current.decide(attestor="k8s", subject="x", claims={}, boundary="orders-db",
                                 scopes=frozenset({"write"})).allowed


def test_source_loads_file(tmp_path: Path) -> None:
    source, path = source_at(tmp_path)
    assert source.current.source == str(path)
    assert len(source.current.rules) == 1


@pytest.mark.parametrize(
    ("text", "logged"),
    [
        ("rules: [", "not valid YAML"),
        (GOOD.replace("orders-db", "nope"), "unknown boundary 'nope'"),
        ("", "policy file is empty"),
        ("rules: []\nrules: []\n", "duplicate key 'rules'"),
    ],
    ids=["bad-yaml", "bad-policy", "emptied", "duplicate-yaml-key"],
)
def test_reload_keeps_old_policy_on_broken_file(tmp_path: Path, caplog, text: str, logged: str) -> None:
    source, path = source_at(tmp_path)
    before = source.current
    rewrite(path, text)
    with caplog.at_level(logging.ERROR, logger="broker.policy.source"):
        assert source.reload() is False
    assert source.current is before
    assert logged in caplog.text


def test_reload_reports_missing_file(tmp_path: Path, caplog) -> None:
    source, path = source_at(tmp_path)
    path.unlink()
    with caplog.at_level(logging.ERROR):
        assert source.reload() is False
    assert "cannot read policy file" in caplog.text


def test_reload_swaps_in_new_policy(tmp_path: Path) -> None:
    source, path = source_at(tmp_path)
    before = source.current.digest
    rewrite(path, GOOD_2)
    assert source.reload() is True
    assert source.current.digest != before and allows_write(source)


def test_maybe_reload_only_when_file_changes(tmp_path: Path) -> None:
    source, path = source_at(tmp_path)
    assert source.maybe_reload() is False
    rewrite(path, GOOD_2)
    assert source.maybe_reload() is True and allows_write(source)
    assert source.maybe_reload() is False


def test_maybe_reload_does_not_retry_a_broken_file_until_it_changes(tmp_path: Path, caplog) -> None:
    source, path = source_at(tmp_path)
    rewrite(path, "rules: [")
    with caplog.at_level(logging.ERROR):
        assert source.maybe_reload() is False
        assert source.maybe_reload() is False
    assert caplog.text.count("policy reload failed") == 1
    rewrite(path, GOOD_2)
    assert source.maybe_reload() is True


def test_maybe_reload_ignores_a_missing_file(tmp_path: Path) -> None:
    source, path = source_at(tmp_path)
    path.unlink()
    assert source.maybe_reload() is False


@pytest.fixture
def restore_sighup():
    previous = signal.getsignal(signal.SIGHUP)
    yield
    signal.signal(signal.SIGHUP, previous)


def test_sighup_reloads(tmp_path: Path, restore_sighup) -> None:
    source, path = source_at(tmp_path)
    source.install_sighup()
    rewrite(path, GOOD_2)
    os.kill(os.getpid(), signal.SIGHUP)
    wait_until(lambda: allows_write(source), 5, "the reload on SIGHUP", interval=0.01)


def test_sighup_install_off_main_thread_is_a_no_op(tmp_path: Path, restore_sighup) -> None:
    source, _ = source_at(tmp_path)
    before = signal.getsignal(signal.SIGHUP)
    worker = threading.Thread(target=source.install_sighup)
    worker.start()
    worker.join()
    assert signal.getsignal(signal.SIGHUP) is before


def test_inline_policy_has_nothing_to_reload() -> None:
    source = PolicySource(path=None, inline=yaml.safe_load(GOOD), boundaries=list(BOUNDARIES.values()),
                          attestors=ATTESTORS)
    assert source.current.source == "inline policy"
    assert source.reload() is False and source.maybe_reload() is False


@pytest.mark.parametrize(
    ("path", "inline"), [(None, None), (Path("p.yaml"), {"rules": []})], ids=["neither", "both"]
)
def test_source_needs_exactly_one_origin(path: Path | None, inline: dict | None) -> None:
    with pytest.raises(ConfigError, match="exactly one of policy_file or policy"):
        PolicySource(path=path, inline=inline, boundaries=BOUNDARIES, attestors=ATTESTORS)


def test_source_refuses_invalid_policy_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"policy\.yaml: rules\[0\] \(a\): allow\[0\]\.boundary"):
        source_at(tmp_path, GOOD.replace("orders-db", "nope"))
