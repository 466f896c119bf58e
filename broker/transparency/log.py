"""The ledger as a Merkle tree: the append hook the ledger calls, and reads of roots, proofs and entries.

Leaf i is the canonical bytes (broker.ledger.chain.canonical) of the audit event with seq i + 1.
The tree is stored as its complete subtrees (`log_nodes`) and its right frontier (`log_head`);
an append costs one read, one insert and one update, whatever the size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, bindparam, insert, select, tuple_, update
from sqlalchemy.orm import sessionmaker

from broker.errors import LedgerUnavailable
from broker.ledger import compiled
from broker.ledger.chain import canonical
from broker.ledger.models import AuditEvent, LogHead, LogNode
from broker.transparency import tree

# built once, like the ledger's append statements: they run in every appending transaction
_HEAD = select(LogHead.size, LogHead.frontier).where(LogHead.id == 1)
_INSERT_NODES = insert(LogNode.__table__)
_INSERT_HEAD = insert(LogHead.__table__)
_SET_HEAD = (
    update(LogHead.__table__)
    .where(LogHead.id == 1)
    .values(size=bindparam("new_size"), frontier=bindparam("new_frontier", type_=LogHead.__table__.c.frontier.type))
)


def append_leaves(executor: compiled.Executor, first_seq: int, entries: Sequence[bytes]) -> None:
    """Add freshly chained events as leaves, inside the appending transaction (the chain head lock is held):
    `entries` are their canonical bytes (broker.ledger.chain.canonical), the first one's event is `first_seq`.

    Fails closed when the log and the ledger are out of step: the event is then not written either.
    """
    head = next(iter(compiled.fetch(executor, _HEAD)), None)
    size, frontier = (head[0], [bytes.fromhex(h) for h in head[1]]) if head else (0, [])
    if first_seq != size + 1:
        raise LedgerUnavailable(f"log out of step: log has {size} leaves, next event is seq {first_seq}")
    frontier, new_size, nodes = tree.append(frontier, size, (tree.leaf_hash(entry) for entry in entries))
    compiled.execute_many(executor, _INSERT_NODES, [{"level": lv, "idx": ix, "hash": h.hex()} for lv, ix, h in nodes])
    hexes = [h.hex() for h in frontier]
    if head is None:
        compiled.fetch(executor, _INSERT_HEAD, {"id": 1, "size": new_size, "frontier": hexes})
    else:
        compiled.fetch(executor, _SET_HEAD, {"new_size": new_size, "new_frontier": hexes})


class LogReader:
    """Read-only view of the stored tree: size, roots, proofs and leaves."""

    def __init__(self, engine: Engine) -> None:
        self._sessions = sessionmaker(engine.execution_options(sqlite_deferred=True))

    def head(self) -> tuple[int, bytes]:
        """The current size and root."""
        with self._sessions() as session, session.begin():
            row = session.execute(select(LogHead.size, LogHead.frontier).where(LogHead.id == 1)).one_or_none()
        if row is None:
            return 0, tree.EMPTY_ROOT
        return row.size, tree.root_from_frontier([bytes.fromhex(h) for h in row.frontier])

    def root(self, size: int) -> bytes:
        self._check_size(size)
        return tree.hashes_for([(0, size)], self._fetch)[0] if size else tree.EMPTY_ROOT

    def inclusion(self, index: int, size: int) -> list[bytes]:
        self._check_size(size)
        return tree.hashes_for(tree.inclusion_ranges(index, size), self._fetch)

    def consistency(self, first: int, second: int) -> list[bytes]:
        self._check_size(second)
        return tree.hashes_for(tree.consistency_ranges(first, second), self._fetch)

    def entries(self, start: int, end: int) -> list[tuple[dict[str, Any], bytes]]:
        """Leaves [start, end) as (event, canonical bytes)."""
        with self._sessions() as session, session.begin():
            query = select(AuditEvent).where(AuditEvent.seq > start, AuditEvent.seq <= end).order_by(AuditEvent.seq)
            rows = [_body(e) for e in session.scalars(query)]
        return [(row, canonical(row)) for row in rows]

    def _check_size(self, size: int) -> None:
        current, _ = self.head()
        if not 0 <= size <= current:
            raise tree.ProofError(f"the log has {current} leaves, not {size}")

    def _fetch(self, keys: set[tree.NodeKey]) -> dict[tree.NodeKey, bytes]:
        if not keys:
            return {}
        with self._sessions() as session, session.begin():
            query = select(LogNode.level, LogNode.idx, LogNode.hash).where(tuple_(LogNode.level, LogNode.idx).in_(keys))
            found = {(r.level, r.idx): bytes.fromhex(r.hash) for r in session.execute(query)}
        if len(found) != len(keys):
            raise LedgerUnavailable("log nodes missing: the stored tree is damaged")
        return found


def _body(event: AuditEvent) -> dict[str, Any]:
    return {
        c: getattr(event, c)
        for c in ("seq", "id", "ts", "kind", "subject", "boundary", "task", "grant_id", "actor", "detail")
    }
