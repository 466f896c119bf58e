"""Parent tokens: every `vault_token` grant's token is the child of one parent per (subject, boundary).

Revoking a token in Vault revokes its children with it, in the same call. So a frozen subject's
every token of a boundary ends with one `revoke-accessor` of its parents (one per broker process
and rotation), where accessor by accessor took ~23 s for 10,000 tokens; OpenBao alone ends 10,000
children of one parent in ~1.8 s.

- A parent is made by the broker's own token through the boundary's parent role
  (`broker-parent-<boundary>`, see plan.py): an orphan, so it never dies with the broker's token
  (AppRole tokens rotate), allowed only `auth/token/create/<the boundary's token roles>`.
- It lives `2 × max_ttl + PARENT_MARGIN` and makes children for its first `max_ttl` only, so
  every child (TTL ≤ the boundary's `max_ttl`) expires at least `PARENT_MARGIN` before its
  parent: a parent's natural end never takes a live grant's token with it.
- The parent's token is a secret held in this process's memory only, never stored; the ledger
  stores its accessor (`grants.parent_handle`). Entries are bounded (`MAX_PARENTS`, least recently
  used dropped; a dropped parent simply ends at its TTL with its children).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from broker.backends.vault import VaultClient
from broker.config import BoundaryConfig

PARENT_MARGIN = 60  # seconds between the last child's end and its parent's
MAX_PARENTS = 10_000


def parent_role(boundary: BoundaryConfig) -> str:
    return f"broker-parent-{boundary.name}"


def parent_policy(boundary: BoundaryConfig) -> str:
    return f"credential-broker-parent-{boundary.name}"


def parent_ttl(boundary: BoundaryConfig) -> int:
    return 2 * int(boundary.max_ttl) + PARENT_MARGIN


@dataclass(frozen=True)
class Parent:
    token: str = field(repr=False)  # a secret: never in a repr, a log line or a traceback's locals dump
    accessor: str
    usable_until: float  # wall clock: a child made later could outlive its parent


class ParentTokens:
    """The parents of this process, made on first use per (boundary, subject) and replaced when due."""

    def __init__(self, vault: VaultClient, deployment: str, clock: Callable[[], float] = time.time) -> None:
        self.vault = vault
        self.deployment = deployment
        self._clock = clock
        self._parents: OrderedDict[tuple[str, str], Parent] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, boundary: BoundaryConfig, subject: str) -> Parent:
        key = (boundary.name, subject)
        with self._lock:  # one creation at a time: a burst for a new subject makes one parent, not sixteen
            found = self._parents.get(key)
            if found is None or found.usable_until <= self._clock():
                found = self._parents[key] = self._create(boundary, subject)
            self._parents.move_to_end(key)
            while len(self._parents) > MAX_PARENTS:
                self._parents.popitem(last=False)
            return found

    def forget(self, accessors: set[str]) -> None:
        """Parents revoked (or refused by Vault): the next grant of their subject gets a new one."""
        with self._lock:
            for key in [k for k, parent in self._parents.items() if parent.accessor in accessors]:
                del self._parents[key]

    def _create(self, boundary: BoundaryConfig, subject: str) -> Parent:
        ttl, now = parent_ttl(boundary), self._clock()
        payload = {
            "ttl": f"{ttl}s", "explicit_max_ttl": f"{ttl}s", "renewable": False,
            "policies": [parent_policy(boundary)], "display_name": f"broker-parent-{boundary.name}"[:64],
            "meta": {"parent": "true", "boundary": boundary.name, "subject": subject[:256], "deployment": self.deployment},
        }  # fmt: skip
        auth = (self.vault.write(f"auth/token/create/{parent_role(boundary)}", payload) or {})["auth"]
        return Parent(auth["client_token"], auth["accessor"], now + ttl - int(boundary.max_ttl) - PARENT_MARGIN)
