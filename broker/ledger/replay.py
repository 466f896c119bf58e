"""Seen DPoP proofs, shared by every worker and replica through the ledger database.

A proof's key is hashed and inserted under a primary key, so the database itself decides a race:
of two replicas offered the same proof, exactly one INSERT succeeds. Rows expire; expired rows are
pruned, and a cap keeps a flood of fresh proofs from growing the table: when it is full, proofs are
refused (fail closed) rather than accepted unchecked.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError

from broker.errors import DpopReplayFull, LedgerUnavailable
from broker.ledger.models import DpopReplay

# the cap is checked (and expired rows pruned) every this many inserts per process, so a check
# costs one COUNT per batch, not per request; the table holds at most capacity + this per replica
CHECK_EVERY = 64


class ReplayStore:
    """`seen(key, expires_at)`: False the first time a proof key is offered, True on a replay."""

    def __init__(self, engine: Engine, capacity: int, clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self._capacity = capacity
        self._clock = clock
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
        self._lock = threading.Lock()
        self._since_check = CHECK_EVERY  # check at the first insert: the table may already be full
        self._full = False

    def seen(self, key: str, expires_at: float) -> bool:
        """Record `key` until `expires_at`; True if it is already recorded and unexpired (a replay).

        Raises DpopReplayFull when the table is at its cap, LedgerUnavailable when it cannot be written.
        """
        digest = hashlib.sha256(key.encode()).hexdigest()  # fixed width, and no client text stored
        now = self._clock()
        try:
            self._check_capacity(now)
            with self._engine.begin() as conn:
                added = conn.execute(
                    self._insert(DpopReplay.__table__)
                    .values(jti_hash=digest, expires_at=expires_at)
                    .on_conflict_do_nothing(index_elements=["jti_hash"])
                ).rowcount
                if added:
                    return False
                # the key is known: a replay, unless its row expired and was not pruned yet
                revived = conn.execute(
                    update(DpopReplay.__table__)
                    .where(DpopReplay.jti_hash == digest, DpopReplay.expires_at <= now)
                    .values(expires_at=expires_at)
                ).rowcount
                return not revived
        except SQLAlchemyError as exc:
            raise LedgerUnavailable(f"replay cache write failed: {type(exc).__name__}") from exc

    def _check_capacity(self, now: float) -> None:
        with self._lock:
            self._since_check += 1
            due = self._full or self._since_check >= CHECK_EVERY
            if due:
                self._since_check = 0
                self._full = self._prune_and_count(now) >= self._capacity
            if self._full:
                raise DpopReplayFull("the DPoP replay cache is full")

    def _prune_and_count(self, now: float) -> int:
        with self._engine.begin() as conn:
            conn.execute(delete(DpopReplay.__table__).where(DpopReplay.expires_at <= now))
            return conn.execute(select(func.count()).select_from(DpopReplay.__table__)).scalar_one()
