"""The abuse limits' count, run on every limited issuance, reads one subject's rows through its own indexes:
never a walk over every active grant of the ledger (which an OR of "active" and "recent" gave on SQLite)."""

from __future__ import annotations

import time

from sqlalchemy import insert

from broker.ledger import Grant, compiled, make_engine, migrate
from broker.ledger.limits import _LOAD, load_on


def _rows(now: float) -> list[dict]:
    """4,000 active grants of other subjects, and three of `w`: two active (one issued long ago), one expired."""
    base = {"attestor": "k8s", "task": "t", "backend": "jwt", "scopes": "read", "fingerprint": "f", "status": "active"}
    rows = [{**base, "id": f"o{n}", "subject": f"other-{n % 50}", "boundary": "b", "handle": f"o{n}",
             "issued_at": now - 10, "expires_at": now + 300} for n in range(4000)]  # fmt: skip
    for gid, issued, expires in (("w1", now - 3000, now + 600), ("w2", now - 5, now + 60), ("w3", now - 30, now - 1)):
        rows.append({**base, "id": gid, "subject": "w", "boundary": "b", "handle": gid, "issued_at": issued,
                     "expires_at": expires})  # fmt: skip
    return rows


def test_the_count_is_one_index_range_per_part_and_counts_right(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'l.db'}", sqlite_synchronous="OFF")
    migrate.upgrade(engine)
    now = time.time()
    values = {"subject": "w", "attestor": "k8s", "boundary": "b", "now": now, "since": now - 60}
    with engine.begin() as conn:
        conn.execute(insert(Grant.__table__), _rows(now))
        load = load_on(conn, subject="w", attestor="k8s", boundary="b", now=now, since=now - 60)
        statement = compiled.compile_for(_LOAD, conn.dialect)
        plan = [r[-1] for r in conn.connection.driver_connection.execute(
            "EXPLAIN QUERY PLAN " + statement.sql, statement.params(values))]  # fmt: skip
    assert (load.active, load.next_expiry, load.recent, load.oldest_recent) == (2, now + 60, 2, now - 30)
    searches = [step for step in plan if "grants" in step]
    assert len(searches) == 4, plan
    assert all(s.startswith("SEARCH grants USING") for s in searches), plan  # never a SCAN, never a multi-index OR
    assert all("ix_grants_subject_boundary_active" in s or "ix_grants_subject_boundary_issued" in s for s in searches)
