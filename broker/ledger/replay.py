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

# rows are counted (after pruning expired ones) every this many inserts per process, so a check
# costs one COUNT per batch, not per request; near the cap every insert counts. Another replica's
# inserts show at the next count, so the table holds at most capacity + this many per other replica
CHECK_EVERY = 64


class ReplayStore:
    """`seen(key, expires_at)`: False the first time a proof key is offered, True on a replay."""

    def __init__(self, engine: Engine, capacity: int, clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self._capacity = capacity
        self._clock = clock
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
        self._lock = threading.Lock()
        self._since_check = CHECK_EVERY  # count at the first insert: the table may already be full
        self._counted = 0  # rows at the last count; this process has added at most _since_check since

    def seen(self, key: str, expires_at: float) -> bool:
        """Record `key` until `expires_at`; True if it is already recorded and unexpired (a replay).

        Raises DpopReplayFull when the table is at its cap, LedgerUnavailable when it cannot be written.
        """
        digest = hashlib.sha256(key.encode()).hexdigest()  # fixed width, and no client text stored
        now = self._clock()
        try:
            self._check_capacity(now)
            with self._engine.begin() as conn:
                # RETURNING, not rowcount: drivers report -1 for an INSERT that did nothing
                added = conn.execute(
                    self._insert(DpopReplay.__table__)
                    .values(jti_hash=digest, expires_at=expires_at)
                    .on_conflict_do_nothing(index_elements=["jti_hash"])
                    .returning(DpopReplay.jti_hash)
                ).first()
                if added is not None:
                    return False
                # the key is known: a replay, unless its row expired and was not pruned yet
                revived = conn.execute(
                    update(DpopReplay.__table__)
                    .where(DpopReplay.jti_hash == digest, DpopReplay.expires_at <= now)
                    .values(expires_at=expires_at)
                    .returning(DpopReplay.jti_hash)
                ).first()
                return revived is None
        except SQLAlchemyError as exc:
            raise LedgerUnavailable(f"replay cache write failed: {type(exc).__name__}") from exc

    def _check_capacity(self, now: float) -> None:
        """Count (after pruning) every CHECK_EVERY inserts, and on every insert once the cap may be reached."""
        with self._lock:
            if self._since_check >= CHECK_EVERY or self._counted + self._since_check >= self._capacity:
                self._counted, self._since_check = self._prune_and_count(now), 0
                if self._counted >= self._capacity:
                    raise DpopReplayFull("the DPoP replay cache is full")
            self._since_check += 1

    def _prune_and_count(self, now: float) -> int:
        with self._engine.begin() as conn:
            conn.execute(delete(DpopReplay.__table__).where(DpopReplay.expires_at <= now))
            return conn.execute(select(func.count()).select_from(DpopReplay.__table__)).scalar_one()
