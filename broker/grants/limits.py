"""Abuse limits on issuance, and aggregated refusals of identity tokens that did not verify.

Per subject (and attestor) at each boundary: at most `max_active_grants` active grants, and at most
`issue_rate` grants issued per `issue_window` (a sliding window). Both are counted in the ledger
database from the grants themselves, so every replica enforces the same numbers and a restart
forgets nothing.

They are enforced inside the issuing transaction (broker/ledger/issuing.py), after the chain head's
lock: exact under any concurrency, across workers and replicas. A backend that calls another system
to mint (Vault) is also checked before minting, so an over-limit request creates no Vault token to
revoke; the broker's own JWTs are not, so their issuance reads nothing before the commit and runs on
the event loop (broker/api/grants.py).

A token that does not verify is an attacker's text: none of it is stored, only its SHA-256
fingerprint and a stable code, and refusals are counted per window and fingerprint (one chained
row per bucket, see broker/ledger/limits.py) so a flood of junk cannot grow the ledger.
"""

from __future__ import annotations

from typing import Any

from broker.config import BoundaryConfig, Settings
from broker.errors import LimitExceeded, RateLimited, TooManyActiveGrants
from broker.fingerprint import fingerprint
from broker.identity import Identity
from broker.ledger import Event, LedgerStore
from broker.ledger.limits import Limits

EXCEEDED: dict[str, type[LimitExceeded]] = {"too_many_active_grants": TooManyActiveGrants, "rate_limited": RateLimited}


class IssuanceLimits:
    """Each boundary's limits, checked before minting where asked; records refusals of unverified tokens."""

    def __init__(self, settings: Settings, ledger: LedgerStore) -> None:
        self.settings = settings
        self.ledger = ledger
        self._at = {b.name: _limits(b, settings) for b in settings.boundaries}  # what the issuing transaction counts

    def at(self, boundary: str) -> Limits | None:
        """The limits the issuing transaction enforces for grants at `boundary` (None: no limit)."""
        return self._at.get(boundary)

    def check(self, identity: Identity, boundary: BoundaryConfig, now: float) -> None:
        """Before minting: raise TooManyActiveGrants or RateLimited (each with `retry_after`) when a limit is reached."""
        limits = self._at.get(boundary.name)
        if limits is None:
            return
        load = self.ledger.limits.load(subject=identity.subject, attestor=identity.attestor, boundary=boundary.name,
                                       now=now, since=now - limits.window)  # fmt: skip
        exceeded = limits.exceeded(load, now)
        if exceeded is not None:
            raise EXCEEDED[exceeded.code](exceeded.detail, retry_after=exceeded.retry_after)

    def record_unverified(
        self, code: str, action: str, token: str | None, now: float, provenance: dict[str, Any] | None = None
    ) -> None:
        """Record the refusal of a token that did not verify: only the code, our action and a fingerprint."""
        width = self.settings.unverified_denial_window
        window = int(now // width) * width
        token_fp = fingerprint(token) if token else "none"
        detail = {"code": code, "action": action, "identity_fp": token_fp, "window_start": window, "window": width,
                  **(provenance or {})}  # fmt: skip
        self.ledger.limits.record_aggregated(
            Event(kind="denied", detail=detail, request_scoped=False),  # one row for a window of requests
            window=window,
            token_fp=token_fp,
            cap=self.settings.unverified_denials_per_window,
        )


def _limits(boundary: BoundaryConfig, settings: Settings) -> Limits | None:
    config = settings.limits_for(boundary)
    if config.max_active_grants is None and config.issue_rate is None:
        return None
    return Limits(boundary.name, config.max_active_grants, config.issue_rate, float(config.issue_window))
