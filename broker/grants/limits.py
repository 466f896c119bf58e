"""Abuse limits on issuance, and aggregated refusals of identity tokens that did not verify.

Per subject (and attestor) at each boundary: at most `max_active_grants` active grants, and at most
`issue_rate` grants issued per `issue_window` (a sliding window). Both are counted in the ledger
database from the grants themselves, so every replica enforces the same numbers and a restart
forgets nothing. The check runs before minting, so requests in flight at the same moment can pass
it together: the limits can be exceeded by at most the number of concurrent requests of one subject.

A token that does not verify is an attacker's text: none of it is stored, only its SHA-256
fingerprint and a stable code, and refusals are counted per window and fingerprint (one chained
row per bucket, see broker/ledger/limits.py) so a flood of junk cannot grow the ledger.
"""

from __future__ import annotations

import math
from typing import Any

from broker.config import BoundaryConfig, Settings
from broker.errors import RateLimited, TooManyActiveGrants
from broker.fingerprint import fingerprint
from broker.identity import Identity
from broker.ledger import Event, LedgerStore


class IssuanceLimits:
    """Checks a subject's load at a boundary before minting; records refusals of unverified tokens."""

    def __init__(self, settings: Settings, ledger: LedgerStore) -> None:
        self.settings = settings
        self.ledger = ledger

    def check(self, identity: Identity, boundary: BoundaryConfig, now: float) -> None:
        """Raise TooManyActiveGrants or RateLimited (each with `retry_after`) when a limit is reached."""
        limits = self.settings.limits_for(boundary)
        if limits.max_active_grants is None and limits.issue_rate is None:
            return
        load = self.ledger.limits.load(
            subject=identity.subject,
            attestor=identity.attestor,
            boundary=boundary.name,
            now=now,
            since=now - limits.issue_window,
        )
        if limits.max_active_grants is not None and load.active >= limits.max_active_grants:
            raise TooManyActiveGrants(
                f"subject holds {load.active} active grants at boundary {boundary.name!r} "
                f"(limit {limits.max_active_grants})",
                retry_after=_seconds_until(load.next_expiry, now),
            )
        if limits.issue_rate is not None and load.recent >= limits.issue_rate:
            raise RateLimited(
                f"subject was issued {load.recent} grants at boundary {boundary.name!r} in the last "
                f"{limits.issue_window}s (limit {limits.issue_rate})",
                retry_after=_seconds_until((load.oldest_recent or now) + limits.issue_window, now),
            )

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


def _seconds_until(when: float | None, now: float) -> int:
    return max(1, math.ceil((when if when is not None else now + 1) - now))
