"""`unindexed(column)`: a condition SQLite's planner may not search an index by, for `status = 'active'`.

SQLite has no statistics unless ANALYZE runs, and then weighs one equality like any other: it took
grants(status, next_attempt_at) for `status = 'active' AND subject = ?` as readily as the subject's
own index, and so walked every active grant of the ledger to revoke one subject (13.5 ms at 100,000
active grants against 0.4 ms), for each batch of 1,000 grants a revocation marks by id, and, in the
issuing batch, to find a completed grant's children.
`+column` is SQLite's documented way to take a term out of index selection; elsewhere (PostgreSQL,
whose planner keeps statistics) the column is left as it is.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import String
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement


class unindexed(FunctionElement):  # noqa: N801 (read as SQL: a function of a column)
    inherit_cache = True
    type = String()


@compiles(unindexed, "sqlite")
def _on_sqlite(element: unindexed, compiler: SQLCompiler, **kw: Any) -> str:
    return "+" + compiler.process(element.clauses, **kw)


@compiles(unindexed)
def _elsewhere(element: unindexed, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.clauses, **kw)
