"""What an attacker with write access to the ledger's SQLite file does to hide a change (test helpers)."""

from __future__ import annotations

import json
import sqlite3

from broker.ledger.chain import GENESIS, canonical, link
from broker.transparency import tree

COLUMNS = ("seq", "id", "ts", "kind", "subject", "boundary", "task", "grant_id", "actor", "detail")


def rechain(db: str) -> None:
    """Recompute every prev_hash and hash and the chain head, so the hash chain verifies again."""
    with sqlite3.connect(db) as conn:
        prev = GENESIS
        for row in conn.execute(f"SELECT {', '.join(COLUMNS)} FROM audit_events ORDER BY seq").fetchall():
            event = {**dict(zip(COLUMNS, row)), "detail": json.loads(row[-1])}
            digest = link(prev, event)
            conn.execute("UPDATE audit_events SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, digest, event["seq"]))
            prev = digest
        last = conn.execute("SELECT coalesce(max(seq), 0) FROM audit_events").fetchone()[0]
        conn.execute("UPDATE ledger_head SET seq = ?, hash = ?", (last, prev))


def rebuild_log(db: str, *, forget_checkpoints: bool = True) -> None:
    """Recompute the stored tree from the (tampered) events; drop the broker's own checkpoints and witness state."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM audit_events ORDER BY seq").fetchall()
        leaves = [tree.leaf_hash(canonical({**dict(zip(COLUMNS, r)), "detail": json.loads(r[-1])})) for r in rows]
        frontier, size, nodes = tree.append([], 0, leaves)
        conn.execute("DELETE FROM log_nodes")
        conn.executemany("INSERT INTO log_nodes (level, idx, hash) VALUES (?, ?, ?)", [(a, b, h.hex()) for a, b, h in nodes])
        conn.execute("UPDATE log_head SET size = ?, frontier = ?", (size, json.dumps([h.hex() for h in frontier])))
        if forget_checkpoints:
            conn.execute("DELETE FROM log_checkpoints")
            conn.execute("DELETE FROM log_witnesses")


def cover_up(db: str) -> None:
    rechain(db)
    rebuild_log(db)
