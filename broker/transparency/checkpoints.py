"""Signing checkpoints: at most once per interval, only when the log grew, one sequence for all replicas.

Whether one is due, and the signing itself, are decided on a read: most passes find nothing due,
and a pass that held SQLite's write lock for its reads, proof and signature (~11 ms here, up to
80 ms under load) stalled every grant's commit behind it, once a second in every worker. The
insert is a short transaction under a lock (a PostgreSQL advisory lock; SQLite's write lock) that
stores the checkpoint only if no other signer stored one since the read; checkpoints are keyed by
size, so two replicas never sign two roots for one size.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine, func, insert, select, text
from sqlalchemy.orm import Session, sessionmaker

from broker.errors import LedgerUnavailable
from broker.ledger.models import LogCheckpoint, LogHead
from broker.transparency.log import LogReader
from broker.transparency import tree
from broker.transparency.checkpoint import Checkpoint, sign_checkpoint
from broker.transparency.note import Signature, Signer

log = logging.getLogger(__name__)
_SIGN_LOCK = 0x746C6F67  # "tlog": any constant shared by every replica


@dataclass(frozen=True)
class Signed:
    """A stored checkpoint: the log-signed note and the witnesses' cosignature lines."""

    size: int
    root: bytes
    note: str
    cosignatures: dict[str, str]

    def cosigned_note(self) -> str:
        """The note with every witness cosignature appended (a C2SP note with several signatures)."""
        return self.note + "".join(self.cosignatures[name] for name in sorted(self.cosignatures))


class Checkpointer:
    """Signs the log's head when it grew and `interval` seconds passed since the last checkpoint."""

    def __init__(self, engine: Engine, signer: Callable[[], Signer], *, interval: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._read = sessionmaker(engine.execution_options(sqlite_deferred=True))
        self._signer, self._interval, self._clock = signer, interval, clock
        self._reader = LogReader(engine)
        self._postgres = engine.dialect.name == "postgresql"

    def maybe_sign(self, force: bool = False) -> Signed | None:
        """The worker job: sign a new checkpoint if one is due; returns it, or None.

        `force` skips the interval (an operator's or a test's "now"); it still signs only a grown log.
        """
        now = self._clock()
        with self._read() as session, session.begin():
            last = _latest(session)
            last_size, last_root, last_at = (last.size, last.root, last.created_at) if last else (0, None, None)
            head = session.execute(select(LogHead.size, LogHead.frontier).where(LogHead.id == 1)).one_or_none()
        if head is None or head.size == last_size:
            return None
        if not force and last_at is not None and now - last_at < self._interval:
            return None
        root = tree.root_from_frontier([bytes.fromhex(h) for h in head.frontier])
        if last_root is not None and not self._extends(last_size, bytes.fromhex(last_root), head.size, root):
            return None
        signer = self._signer()
        note = sign_checkpoint(Checkpoint(signer.name, head.size, root), signer)
        with self._sessions() as session, session.begin():
            if self._postgres:
                session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SIGN_LOCK})
            if (session.scalar(select(func.max(LogCheckpoint.size))) or 0) != last_size:
                return None  # another worker or replica signed since the read: its checkpoint stands
            session.execute(insert(LogCheckpoint.__table__).values(
                size=head.size, root=root.hex(), created_at=now, note=note, cosignatures={}))  # fmt: skip
        log.info("log checkpoint signed", extra={"size": head.size, "root": root.hex()})
        return Signed(head.size, root, note, {})

    def _extends(self, last_size: int, last_root: bytes, size: int, root: bytes) -> bool:
        """Never sign a history that does not extend our own last checkpoint (a cut or rewritten log)."""
        try:
            proof = self._reader.consistency(last_size, size) if last_size <= size else []
            tree.verify_consistency(last_size, size, last_root, root, proof)
        except (tree.ProofError, LedgerUnavailable) as exc:
            log.error("refusing to sign checkpoint %d: the log does not extend checkpoint %d (%s)", size, last_size, exc)
            return False
        return True

    def latest(self) -> Signed | None:
        with self._read() as session, session.begin():
            row = _latest(session)
            return _signed(row) if row else None

    def at_least(self, size: int) -> Signed | None:
        """The first checkpoint that covers `size` leaves (for receipts)."""
        with self._read() as session, session.begin():
            query = select(LogCheckpoint).where(LogCheckpoint.size >= size).order_by(LogCheckpoint.size).limit(1)
            row = session.scalars(query).first()
            return _signed(row) if row else None

    def add_cosignature(self, size: int, signature: Signature) -> None:
        with self._sessions() as session, session.begin():
            row = session.get(LogCheckpoint, size, with_for_update=self._postgres)
            if row is not None:
                row.cosignatures = {**row.cosignatures, signature.name: signature.line()}


def _latest(session: Session) -> LogCheckpoint | None:
    size = session.scalar(select(func.max(LogCheckpoint.size)))
    return session.get(LogCheckpoint, size) if size is not None else None


def _signed(row: LogCheckpoint) -> Signed:
    return Signed(row.size, bytes.fromhex(row.root), row.note, dict(row.cosignatures))
