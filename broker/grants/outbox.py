"""The revocation outbox: commit the intent, then revoke at the backend, retry what failed.

A revocation is first written (`revoke_pending`, with everything the backend needs), then executed;
a failure stays pending with a retry time, so a revocation survives Vault outages and restarts
(promise 5). The reaper ends grants past their expiry through the same path.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from broker.backends import Backend
from broker.config import Settings
from broker.errors import BackendUnavailable, BrokerError
from broker.ledger import REVOKE_PENDING, Grant, LedgerStore

CLAIM_LEASE = 30.0  # seconds one outbox worker owns the revocations it claimed


@dataclass(frozen=True)
class RevokeOutcome:
    """How many grants a revocation matched, finished and left pending."""

    matched: int
    revoked: int
    pending: int
    grant_ids: list[str] = field(default_factory=list)


class Outbox:
    """Revoke, execute, retry and expire, over the ledger's grant rows and the backends."""

    def __init__(
        self,
        settings: Settings,
        backends: Mapping[str, Backend],
        ledger: LedgerStore,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.backends = backends
        self.ledger = ledger
        self.clock = clock
        self.boundaries = {b.name: b for b in settings.boundaries}
        # a grant ends here (its ledger status is the deny list) when its boundary is configured and its
        # backend calls nothing: the broker's own JWTs; the ledger writer gets these too (EndGrant)
        self.boundary_names = frozenset(self.boundaries)
        self.local_backends = frozenset(name for name, backend in backends.items() if not backend.calls_out)

    def revoke(
        self,
        grant_ids: Sequence[str],
        *,
        end_status: str,
        actor: str,
        reason: str,
        revocation_id: str | None = None,
    ) -> RevokeOutcome:
        """Commit the intent for every grant, then execute; failures stay `revoke_pending`. A grant whose
        backend has nothing to call ends in that first transaction (one commit, not two)."""
        moved = self.ledger.begin_revoke(
            grant_ids, end_status=end_status, actor=actor, reason=reason, revocation_id=revocation_id,
            ends_here=self._ends_here,
        )  # fmt: skip
        pending = [grant for grant in moved if grant.status == REVOKE_PENDING]
        revoked = len(moved) - len(pending) + sum(self.execute(grant) for grant in pending)
        return RevokeOutcome(len(moved), revoked, len(moved) - revoked, [g.id for g in moved])

    def _ends_here(self, grant: Grant) -> bool:
        """The broker's own JWTs: revoking one is its status in the ledger (the deny list), no backend call."""
        return grant.boundary in self.boundary_names and grant.backend in self.local_backends

    def execute(self, grant: Grant) -> bool:
        """Revoke at the backend; True when done, False when left for the retry worker."""
        boundary = self.boundaries.get(grant.boundary)
        backend = self.backends.get(grant.backend)
        try:
            if boundary is None or backend is None:
                raise BackendUnavailable(f"no backend configured for boundary {grant.boundary!r}")
            backend.revoke(boundary, grant.handle)
        except BrokerError as exc:
            delay = backoff(grant.revoke_attempts, self.settings.revoke_retry_max_delay)
            self.ledger.fail_revoke(grant.id, error=exc.detail, retry_at=self.clock() + delay)
            return False
        self.ledger.finish_revoke(grant.id)
        return True

    def retry_pending(self, limit: int = 500) -> int:
        """One pass of the outbox worker: execute due revocations; returns how many succeeded."""
        claimed = self.ledger.claim_due_revocations(self.clock(), limit, lease=CLAIM_LEASE)
        return sum(self.execute(grant) for grant in claimed)

    def expire_due(self, limit: int = 1000) -> int:
        """One pass of the reaper: grants past expiry end as `expired`, their credential revoked."""
        self.ledger.prune_idempotency_keys(self.clock())
        ids = self.ledger.expired_active(self.clock(), limit)
        if not ids:
            return 0
        return self.revoke(ids, end_status="expired", actor="broker:reaper", reason="ttl elapsed").matched


def backoff(attempts: int, max_delay: int) -> float:
    """Exponential backoff with full jitter (uniform between 0 and the capped exponential step)."""
    return random.uniform(0, 1) * min(max_delay, 2 ** min(attempts, 16))
