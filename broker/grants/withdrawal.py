"""Withdrawal: when a reloaded policy no longer allows a live grant, the grant ends (or is reported).

A grant records the id of the rule that allowed it (and the policy revision). It stays allowed by
a new policy only if that same rule is still there and still allows it: it matches the grant's
attestor and subject, opens its boundary with all its scopes, and its TTL cap covers the grant's
lifetime. A rule removed, or renamed without an explicit `id:`, withdraws every grant it allowed.

Claims are not stored with a grant (they may be personal data and are not needed afterwards), so
a rule's claim conditions cannot be re-checked against a grant. Instead the reload compares them
with the replaced policy's: a rule whose claim conditions changed in any way withdraws its grants
(fail closed; the workloads ask again and are decided under the new conditions). Grants recorded
before provenance existed (no rule) stay only if a rule without claim conditions allows them.

A grant being issued while the reload happens was decided by the old revision: the service checks
each commit's revision against the current one and re-decides it with the caller's claims in hand
(`issued_meanwhile`), so none slips between the scan and the swap.

`on_withdraw: revoke` (the default) revokes through the operators' revocation path with reason
`policy withdrawn: rule <id>`; `report` only lists them: the reload log, the
`broker_policy_withdrawn_grants` gauge and the `/readyz` detail (counts per rule).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from broker.errors import PolicyDenied
from broker.identity import Identity
from broker.ledger import ACTIVE, Filter, Grant
from broker.policy.engine import Policy, Rule

log = logging.getLogger(__name__)
PAGE = 1000
SHOWN = 100  # grant ids named in one log line; the gauge counts them all


class Withdrawal:
    """Applies each policy reload to the live grants, in reload order, retrying a pass the ledger refused."""

    def __init__(self, operations: Any, mode: str = "revoke") -> None:
        self.operations = operations
        self.ledger = operations.ledger
        self.mode = mode
        self.reported: dict[str, dict[str, Any]] = {}  # report mode: grant id -> what and why
        self.withdrawn = 0  # grants revoked by withdrawal since start
        self.listeners: list[Callable[[str, int], None]] = []  # (action, count), for metrics
        self._due: list[tuple[Policy, Policy]] = []
        self._lock = threading.Lock()

    def on_reload(self, old: Policy, new: Policy) -> None:
        with self._lock:
            self._due.append((old, new))
        self.run_due()

    def run_due(self) -> None:
        """Apply pending reloads; one the ledger could not take stays due for the next worker pass."""
        with self._lock:
            while self._due:
                old, new = self._due[0]
                self._apply(old, new)
                self._due.pop(0)

    def issued_meanwhile(self, identity: Identity, grant: Grant) -> None:
        """A grant decided by an older revision committed after a reload: re-decide it with its claims."""
        new = self.operations.service.policy.current
        rule = new.rule(grant.rule) if grant.rule else None
        if rule is not None and rule.matches(identity.attestor, identity.subject, identity.claims) and _opens(rule, grant):
            return
        self._act(new, {grant.rule: [grant]})
        if self.mode == "revoke":
            raise PolicyDenied(f"policy withdrawn while issuing: rule {grant.rule}")

    def status(self) -> dict[str, Any]:
        """The `/readyz` detail: what the current policy no longer allows but is still live (report mode)."""
        # /readyz answers anyone: counts per rule only, no subject or grant id (those are in the reload log)
        by_rule: dict[str, int] = defaultdict(int)
        for row in self.reported.values():
            by_rule[row["rule"] or "(unrecorded)"] += 1
        return {"on_withdraw": self.mode, "withdrawn_live": len(self.reported), "withdrawn_live_by_rule": dict(by_rule),
                "withdrawn_revoked": self.withdrawn, "pending_reloads": len(self._due)}  # fmt: skip

    # --- one reload ----------------------------------------------------------------------------

    def _apply(self, old: Policy, new: Policy) -> None:
        if old.digest == new.digest:
            return
        lost: dict[str | None, list[Grant]] = defaultdict(list)
        kept: set[str] = set()
        active = self._active()
        live = {g.id for g in active}
        for grant in active:
            if grant.backend == "txn_token" or still_allowed(grant, old, new):  # a txn token: only its parent's rights
                kept.add(grant.id)
            else:
                lost[grant.rule].append(grant)
        # a grant reported earlier stays reported while live, unless this revision allows it again
        self.reported = {gid: row for gid, row in self.reported.items() if gid not in kept and gid in live}
        self._act(new, lost)

    def _act(self, new: Policy, lost: dict[str | None, list[Grant]]) -> None:
        for rule, grants in lost.items():
            ids = [g.id for g in grants]
            if self.mode == "revoke":
                revocation = self.operations.withdraw(rule, ids, new.digest)
                self.withdrawn += len(ids)
                log.warning("policy %s withdrew %d grants of rule %s (revocation %s)",
                            new.digest[:12], len(ids), rule, revocation)  # fmt: skip
                self._tell("revoked", len(ids))
                continue
            for grant in grants:
                self.reported[grant.id] = {"grant_id": grant.id, "subject": grant.subject, "boundary": grant.boundary,
                                           "rule": rule, "policy_revision": new.digest}  # fmt: skip
            log.warning("policy %s no longer allows %d live grants of rule %s (on_withdraw: report): %s",
                        new.digest[:12], len(ids), rule, ", ".join(ids[:SHOWN]))  # fmt: skip
            self._tell("reported", len(ids))

    def _active(self) -> list[Grant]:
        grants: list[Grant] = []
        after = None
        while page := self.ledger.queries.inventory(Filter(status=ACTIVE), after=after, limit=PAGE):
            grants += page
            after = (page[-1].issued_at, page[-1].id)
        return grants

    def _tell(self, action: str, count: int) -> None:
        for listener in self.listeners:
            listener(action, count)


def still_allowed(grant: Grant, old: Policy, new: Policy) -> bool:
    """Whether the new policy still allows a live grant the old one allowed (see the module doc)."""
    if grant.rule is None:  # recorded before provenance: only a rule needing no claims can vouch for it
        return any(not r.claims_text and r.matches_subject(grant.attestor, grant.subject) and _opens(r, grant)
                   for r in new.rules)  # fmt: skip
    rule = new.rule(grant.rule)
    if rule is None or not rule.matches_subject(grant.attestor, grant.subject) or not _opens(rule, grant):
        return False
    if not rule.claims_text:
        return True
    before = old.rule(grant.rule)
    return before is not None and before.claims_text == rule.claims_text


def _opens(rule: Rule, grant: Grant) -> bool:
    return rule.opens(grant.boundary, frozenset(grant.scope_list), grant.expires_at - grant.issued_at)
