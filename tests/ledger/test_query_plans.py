"""Reads that run per issuance, per completion or per revocation find their rows through their own indexes:
never a walk over every active grant of the ledger. SQLite has no statistics, and took an OR of "active"
and "recent" (the abuse limits' count), or `status = 'active'` beside a selective term, as a reason to walk
grants(status, …) (broker/ledger/unindexed.py)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import event, insert

from broker.ledger import Grant, LedgerStore, compiled, make_engine, migrate
from broker.ledger.issuing import Ended, EndGrant, Write
from broker.ledger.limits import _LOAD, load_on
from broker.ledger.queries import Filter, Selector


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


def _plans(tmp_path, read) -> list[list[str]]:  # noqa: ANN001
    """The query plan of every grants read `read(store, now)` runs, on 4,003 rows (tests above)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'l.db'}", sqlite_synchronous="OFF")
    migrate.upgrade(engine)
    now = time.time()
    with engine.begin() as conn:
        conn.execute(insert(Grant.__table__), _rows(now))
    statements: list[tuple[str, tuple]] = []
    event.listen(engine, "before_cursor_execute", lambda _c, _cur, sql, params, *_: statements.append((sql, params)))
    read(LedgerStore(engine), now)
    with engine.connect() as conn:
        explain = conn.connection.driver_connection.execute
        return [[r[-1] for r in explain("EXPLAIN QUERY PLAN " + sql, params)] for sql, params in statements
                if "FROM grants" in sql]  # fmt: skip


SELECTORS = [(Selector(subject="w"), "ix_grants_subject_boundary"), (Selector(task="t"), "ix_grants_task_subject"),
             (Selector(boundary="b"), "ix_grants_boundary"), (Selector(grant_id="w1"), "sqlite_autoindex_grants_1"),
             (Selector(policy_revision="r"), "ix_grants_policy_revision_status"),
             (Selector(rule="r"), "ix_grants_rule_status")]  # fmt: skip


@pytest.mark.parametrize(("selector", "index"), SELECTORS, ids=[i for _, i in SELECTORS])
def test_an_operators_revocation_finds_its_grants_through_the_selectors_own_index(tmp_path, selector, index):
    """Never through `status = 'active'` (every active grant of the ledger): SQLite, without statistics, took
    that index as often as the selector's, and revoking one subject walked every active grant."""
    (plan,) = _plans(tmp_path, lambda store, _now: store.queries.active_ids(selector))
    assert len(plan) == 1 and plan[0].startswith("SEARCH grants USING") and index in plan[0], plan


def test_a_subjects_window_searches_an_index_that_starts_with_the_subject(tmp_path):
    """grants(subject) alone was dropped as the duplicate of the limits' two indexes' first column."""
    found: list[list[str]] = []
    (plan,) = _plans(tmp_path, lambda store, now: found.append(
        [g.id for g in store.queries.window_grants(Filter(subject="w"), now - 60, now)]))  # fmt: skip
    assert found == [["w1", "w3", "w2"]]
    assert any(step.startswith("SEARCH grants USING INDEX ix_grants_subject_boundary") for step in plan), plan


def test_a_completion_in_the_issuing_batch_looks_for_its_children_by_parent(tmp_path):
    """The batch reads the completed grants' rows and their active derived grants; both by their own index."""
    ends = [EndGrant(g, "w", "k8s", frozenset({"b"}), frozenset({"jwt"}), request_id=None) for g in ("w1", "w2")]
    outcomes: list[object] = []
    plans = _plans(tmp_path, lambda store, _now: outcomes.extend(
        a.outcome for a in store.apply_writes([Write([], end=end) for end in ends])))  # fmt: skip
    assert [type(o) for o in outcomes] == [Ended, Ended]
    reads = [plan for plan in plans if plan and plan[0].startswith(("SEARCH", "SCAN"))]
    assert len(reads) == 2 and all(p[0].startswith("SEARCH grants USING") for p in reads), plans
    assert "sqlite_autoindex_grants_1" in reads[0][0] and "ix_grants_parent" in reads[1][0], plans


def test_a_revocation_finds_the_grants_derived_from_it_by_parent(tmp_path):
    moved: list[str] = []
    plans = _plans(tmp_path, lambda store, _now: moved.extend(g.id for g in store.begin_revoke(
        ["w1", "w2"], end_status="revoked", actor="op", reason="test")))  # fmt: skip
    assert moved == ["w1", "w2"]
    searches = [step for plan in plans for step in plan if "grants" in step]
    assert any("ix_grants_parent" in step for step in searches), plans
    assert all(step.startswith("SEARCH grants USING") and "ix_grants_status" not in step for step in searches), plans


def test_an_operators_revocation_marks_its_batch_by_id(tmp_path):
    """`begin_revoke_many` (1,000 grants a transaction) reads its batch by primary key: through the status
    index it walked every active grant once per batch (0.85 → 0.52 s for 10,000 of 100,000 active grants)."""
    ids = [f"o{n}" for n in range(0, 4000, 4)]  # a batch as operations.py makes them
    moved: list[str] = []
    plans = _plans(tmp_path, lambda store, _now: moved.extend(r.id for r in store.begin_revoke_many(
        ids, end_status="revoked", actor="op", reason="test")))  # fmt: skip
    assert sorted(moved) == sorted(ids)
    batch = next(plan for plan in plans if any("sqlite_autoindex_grants_1" in s or "ix_grants_status" in s for s in plan))
    assert batch[0].startswith("SEARCH grants USING INDEX sqlite_autoindex_grants_1"), plans
