"""Start-up reconcile: revoke backend credentials that no live grant row accounts for (promise 5).

A crash between the mint and the ledger commit leaves a credential in Vault with no grant row.
Backends that can list what they minted (`live_handles`) are asked for every handle created
before this process started; a handle that is not the handle of an `active` or `revoke_pending`
grant is revoked and a `reconciled` event is chained. Credentials minted by this process are
never judged (its own mints are committed or revoked by itself), so the job is safe beside
traffic. Another replica's mint that is in flight while this one starts may be judged too early:
replicas should start one at a time. Active grants past expiry are the reaper's (`expire_due`),
which the worker runs in the same first pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from broker.backends import Backend, fingerprint
from broker.config import BoundaryConfig
from broker.errors import BrokerError
from broker.ledger import ACTIVE, REVOKE_PENDING, Event, LedgerStore

log = logging.getLogger(__name__)


class Listing(Protocol):
    """Optional part of a backend: the handles it finds in the downstream system, per boundary."""

    kind: str

    def live_handles(self, boundaries: Iterable[BoundaryConfig], created_before: float) -> dict[str, list[str]]: ...


class Reconciler:
    """Runs once per process (as a worker job, retried until Vault answers), then does nothing."""

    def __init__(
        self,
        backends: dict[str, Backend],
        boundaries: list[BoundaryConfig],
        ledger: LedgerStore,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._backends = {id(b): b for b in backends.values() if hasattr(b, "live_handles")}
        self._boundaries = boundaries
        self._ledger = ledger
        self._started_at = clock()
        self.done = not self._backends

    def run(self) -> int:
        """Revoke orphans of every listing backend; returns how many were revoked."""
        if self.done:
            return 0
        revoked = sum(self._reconcile(backend) for backend in self._backends.values())
        self.done = True
        return revoked

    def _reconcile(self, backend: Listing) -> int:
        found = backend.live_handles(self._boundaries, self._started_at)
        revoked = 0
        for name, handles in found.items():
            orphans = set(handles) - self._live(name)
            revoked += sum(self._revoke(backend, name, handle) for handle in sorted(orphans))
        return revoked

    def _live(self, boundary: str) -> set[str]:
        rows = self._ledger.grants(boundary=boundary, status=ACTIVE) + self._ledger.grants(
            boundary=boundary, status=REVOKE_PENDING
        )
        return {row.handle for row in rows}

    def _revoke(self, backend: Listing, boundary_name: str, handle: str) -> bool:
        boundary = next(b for b in self._boundaries if b.name == boundary_name)
        try:
            backend.revoke(boundary, handle)  # type: ignore[attr-defined]
        except BrokerError as exc:
            log.warning("reconcile could not revoke a %s orphan of %s: %s", backend.kind, boundary_name, exc.code)
            raise
        detail = {"backend": backend.kind, "handle_fp": fingerprint(handle)[:23], "reason": "no live grant row"}
        self._ledger.record(Event(kind="reconciled", boundary=boundary_name, actor="broker:reconcile", detail=detail))
        return True
