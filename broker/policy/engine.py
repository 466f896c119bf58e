"""Deciding requests against a compiled policy: deny by default, one rule must allow it all."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from broker.config import SCOPE

ClaimPatterns = tuple[tuple[str, tuple[re.Pattern[str], ...]], ...]


@dataclass(frozen=True)
class Decision:
    """The answer to one request: allowed or not, by which rule, with which TTL cap and why."""

    allowed: bool
    rule: str | None  # the deciding rule's stable id; None when no rule allowed it (deny by default)
    max_ttl: int | None
    reason: str
    revision: str = ""  # the deciding policy's content hash


@dataclass(frozen=True)
class Allowance:
    """What one rule opens in one boundary."""

    scopes: frozenset[str]
    max_ttl: int


@dataclass(frozen=True, eq=False)
class Rule:
    """One compiled rule: whom it matches and what it allows."""

    name: str
    attestor: str | None
    subject: re.Pattern[str] | None
    claims: ClaimPatterns
    allows: Mapping[str, Allowance]
    roles: frozenset[str]
    id: str = ""  # stable: the explicit `id:`, else the name (a renamed rule without an `id:` is a new rule)
    claims_text: tuple[tuple[str, tuple[str, ...]], ...] = ()  # the claim conditions as written, to compare
    subject_text: str | None = None  # the subject pattern as written

    def matches(self, attestor: str, subject: str, claims: Mapping[str, Any]) -> bool:
        if not self.matches_subject(attestor, subject):
            return False
        return all(_claim_matches(claims.get(key), patterns) for key, patterns in self.claims)

    def matches_subject(self, attestor: str, subject: str) -> bool:
        """The attestor and subject conditions alone (claims are checked by `matches`)."""
        if self.attestor is not None and self.attestor != attestor:
            return False
        return self.subject is None or bool(self.subject.fullmatch(subject))

    def opens(self, boundary: str, scopes: frozenset[str], lifetime: float) -> bool:
        """Whether this rule allows these scopes at this boundary for a grant of this lifetime (seconds)."""
        allowance = self.allows.get(boundary)
        return allowance is not None and scopes <= allowance.scopes and round(lifetime) <= allowance.max_ttl


@dataclass(frozen=True, eq=False)
class Policy:
    """A compiled, immutable policy; build it with `compile_policy`."""

    source: str
    digest: str
    rules: tuple[Rule, ...]
    warnings: tuple[str, ...] = ()

    def decide(
        self, *, attestor: str, subject: str, claims: Mapping[str, Any], boundary: str, scopes: frozenset[str]
    ) -> Decision:
        """Allow only if a single matching rule allows the boundary with every requested scope."""
        if not scopes:
            return self._deny("no scopes requested")
        matching = self._matching(attestor, subject, claims)
        if not matching:
            return self._deny("no rule matches subject")
        offers = [(rule, rule.allows[boundary]) for rule in matching if boundary in rule.allows]
        if not offers:
            return self._deny("boundary not allowed")
        # Scopes are never unioned across rules: two narrow rules must not add up to a wide one.
        qualifying = [(rule, allowance) for rule, allowance in offers if scopes <= allowance.scopes]
        if not qualifying:
            return self._deny(_scopes_reason(scopes, [allowance for _, allowance in offers]))
        rule, allowance = max(qualifying, key=lambda offer: offer[1].max_ttl)
        return Decision(allowed=True, rule=rule.id, max_ttl=allowance.max_ttl, reason="allowed", revision=self.digest)

    def best_scopes(
        self, *, attestor: str, subject: str, claims: Mapping[str, Any], boundary: str, within: frozenset[str]
    ) -> frozenset[str]:
        """The largest part of `within` that one matching rule allows at this boundary (never a union of rules)."""
        offers = [rule.allows[boundary].scopes & within for rule in self._matching(attestor, subject, claims)
                  if boundary in rule.allows]  # fmt: skip
        return max(offers, key=lambda offer: (len(offer), sorted(offer)), default=frozenset())

    def explain(
        self, *, attestor: str, subject: str, claims: Mapping[str, Any], boundary: str, scopes: frozenset[str]
    ) -> list[tuple[str, str]]:
        """Every rule in order with what it did for this request: (rule id, verdict); the decision is `decide`'s."""
        lines = []
        for rule in self.rules:
            if not rule.matches(attestor, subject, claims):
                verdict = "does not match the subject"
            elif boundary not in rule.allows:
                verdict = f"matches, but does not open boundary {boundary!r}"
            elif not scopes <= rule.allows[boundary].scopes:
                verdict = f"matches, lacks scopes {', '.join(sorted(scopes - rule.allows[boundary].scopes))}"
            else:
                verdict = f"matches and allows (max_ttl {rule.allows[boundary].max_ttl}s)"
            lines.append((rule.id, verdict))
        return lines

    def rule(self, rule_id: str) -> Rule | None:
        return next((rule for rule in self.rules if rule.id == rule_id), None)

    def _deny(self, reason: str) -> Decision:
        return Decision(allowed=False, rule=None, max_ttl=None, reason=reason, revision=self.digest)

    def roles(self, *, attestor: str, subject: str, claims: Mapping[str, Any]) -> frozenset[str]:
        """Every role that any matching rule gives this subject."""
        return frozenset().union(*(rule.roles for rule in self._matching(attestor, subject, claims)))

    def _matching(self, attestor: str, subject: str, claims: Mapping[str, Any]) -> list[Rule]:
        return [rule for rule in self.rules if rule.matches(attestor, subject, claims)]


def claim_texts(value: Any) -> tuple[str, ...]:
    """A claim (or policy) value as the strings it is compared as; unsupported types give none."""
    if isinstance(value, list | tuple):
        return tuple(text for item in value if not isinstance(item, list | tuple) for text in claim_texts(item))
    if isinstance(value, bool):
        # YAML and JSON both spell booleans in lower case; `str(True)` would not match `true`.
        return ("true" if value else "false",)
    if isinstance(value, str | int):
        return (str(value),)
    return ()


def _claim_matches(value: Any, patterns: tuple[re.Pattern[str], ...]) -> bool:
    return any(pattern.fullmatch(text) for text in claim_texts(value) for pattern in patterns)


def _scopes_reason(scopes: frozenset[str], allowances: list[Allowance]) -> str:
    # Name what the closest rule lacks; scope names come from the request, so only
    # well-formed ones are echoed into the ledger.
    missing = min((scopes - a.scopes for a in allowances), key=lambda m: (len(m), sorted(m)))
    shown = sorted(s if re.fullmatch(SCOPE, s) else "<invalid>" for s in missing)
    return "scopes not allowed: " + ", ".join(dict.fromkeys(shown))
