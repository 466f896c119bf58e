"""Offline, read-only audit of a ledger database against a signed (and cosigned) checkpoint.

Rebuilds the tree from the events themselves, so nothing the database says about its own tree is
trusted; the database's stored tree, hash chain, grants and older checkpoints only help to name the
first bad index. Tampered means: the events do not hash to the checkpoint's root at its size (edited,
deleted, reordered, truncated or rewritten history), or the database contradicts itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, select

from broker.ledger.chain import GENESIS, canonical, link
from broker.ledger.models import FINAL_STATUSES, AuditEvent, Grant, LogCheckpoint, LogNode
from broker.transparency import tree
from broker.transparency.checkpoint import Checkpoint, open_checkpoint
from broker.transparency.note import NoteError, Verifier

BATCH = 5000


@dataclass
class Finding:
    """One thing that does not fit; `index` is the first leaf it implicates, when known."""

    index: int | None
    problem: str


@dataclass
class AuditReport:
    """The verdict: ok, or the findings, the first (lowest index) one named."""

    checkpoint_size: int
    ledger_size: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def first(self) -> Finding | None:
        known = [f for f in self.findings if f.index is not None]
        return min(known, key=lambda f: f.index) if known else (self.findings[0] if self.findings else None)

    def as_dict(self) -> dict[str, Any]:
        first = self.first
        return {"ok": self.ok, "checkpoint_size": self.checkpoint_size, "ledger_size": self.ledger_size,
                "first_bad_index": first.index if first else None, "problem": first.problem if first else None,
                "findings": [f.__dict__ for f in self.findings]}  # fmt: skip


def verify_ledger(conn: Connection, checkpoint: Checkpoint, log_key: Verifier) -> AuditReport:
    """Check every event against the checkpoint, the stored tree, the chain and the grants table."""
    report = AuditReport(checkpoint.size)
    signed = _stored_checkpoints(conn, log_key)
    wanted = {checkpoint.size, *signed}
    frontier, size, prev_hash, roots = [], 0, GENESIS, {}
    for batch in _batches(conn):
        stored = _stored_leaves(conn, size, size + len(batch))
        for event in batch:
            index = size
            if event["seq"] != index + 1:
                report.findings.append(Finding(index, f"expected seq {index + 1}, found {event['seq']}: rows deleted or reordered"))
                return _finish(report, size, roots, checkpoint, signed)
            leaf = tree.leaf_hash(canonical(event))
            if stored.get(index, leaf) != leaf:
                report.findings.append(Finding(index, "the event does not hash to its stored leaf: the row was edited"))
            if event["prev_hash"] != prev_hash or link(prev_hash, event) != event["hash"]:
                report.findings.append(Finding(index, "the event breaks the hash chain: edited, deleted or reordered"))
            prev_hash = event["hash"]
            frontier, size, _ = tree.append(frontier, size, [leaf])
            if size in wanted:
                roots[size] = tree.root_from_frontier(frontier)
    report.findings += _grant_findings(conn)
    return _finish(report, size, roots, checkpoint, signed)


def open_and_check(note: str, log_key: Verifier, witnesses: list) -> tuple[Checkpoint, list[str]]:
    """The checkpoint, after its log signature and every required witness cosignature verified."""
    checkpoint, cosigned = open_checkpoint(note, log_key, witnesses)
    missing = sorted({w.name for w in witnesses} - set(cosigned))
    if missing:
        raise NoteError(f"the checkpoint lacks a valid cosignature from {', '.join(missing)}")
    return checkpoint, cosigned


def _finish(report: AuditReport, size: int, roots: dict[int, bytes], checkpoint: Checkpoint,
            signed: dict[int, bytes]) -> AuditReport:  # fmt: skip
    report.ledger_size = size
    if size < checkpoint.size:
        report.findings.append(Finding(size, f"the ledger has {size} events, the checkpoint covers {checkpoint.size}: "
                                             "history was cut (deleted tail or an old backup)"))  # fmt: skip
    elif roots.get(checkpoint.size, tree.EMPTY_ROOT) != checkpoint.root:
        after = _last_good(roots, signed, checkpoint.size)
        where = f" (after index {after - 1}, the last log-signed checkpoint that still matches)" if after else ""
        report.findings.append(Finding(None, f"the first {checkpoint.size} events do not hash to the checkpoint's "
                                             f"root: history was rewritten{where}"))  # fmt: skip
    return report


def _last_good(roots: dict[int, bytes], signed: dict[int, bytes], limit: int) -> int:
    """The size of the last older log-signed checkpoint in the database the events still match (0: none)."""
    good = 0
    for size in sorted(s for s in signed if s <= limit):
        if roots.get(size) != signed[size]:
            break
        good = size
    return good


def _batches(conn: Connection) -> Iterator[list[dict[str, Any]]]:
    after = 0
    columns = [getattr(AuditEvent, c) for c in ("seq", "id", "ts", "kind", "subject", "boundary", "task", "grant_id",
                                                "actor", "detail", "prev_hash", "hash")]  # fmt: skip
    while rows := conn.execute(select(*columns).where(AuditEvent.seq > after).order_by(AuditEvent.seq).limit(BATCH)).mappings().all():
        yield [dict(r) for r in rows]
        after = rows[-1]["seq"]


def _stored_leaves(conn: Connection, start: int, end: int) -> dict[int, bytes]:
    query = select(LogNode.idx, LogNode.hash).where(LogNode.level == 0, LogNode.idx >= start, LogNode.idx < end)
    return {r.idx: bytes.fromhex(r.hash) for r in conn.execute(query)}


def _stored_checkpoints(conn: Connection, log_key: Verifier) -> dict[int, bytes]:
    """Older checkpoints in the database that carry a valid log signature (forged ones are ignored)."""
    found = {}
    for row in conn.execute(select(LogCheckpoint.note)):
        try:
            checkpoint, _ = open_checkpoint(row.note, log_key)
        except NoteError:
            continue
        found[checkpoint.size] = checkpoint.root
    return found


def _grant_findings(conn: Connection) -> list[Finding]:
    """Each grant has its `issued` event, each ended grant its end event (a grant row alone proves nothing)."""
    kinds: dict[str, set[str]] = {}
    for row in conn.execute(select(AuditEvent.grant_id, AuditEvent.kind).where(AuditEvent.grant_id.is_not(None))):
        kinds.setdefault(row.grant_id, set()).add(row.kind)
    findings = []
    for grant in conn.execute(select(Grant.id, Grant.status)):
        seen = kinds.get(grant.id, set())
        if "issued" not in seen:
            findings.append(Finding(None, f"grant {grant.id} has no issued event"))
        elif grant.status in FINAL_STATUSES and grant.status not in seen:
            findings.append(Finding(None, f"grant {grant.id} is {grant.status} without its {grant.status} event"))
    return findings
