"""The append statements, compiled once per dialect and run straight on the driver's cursor.

Every ledger append runs the same few statements (chain head, events, log nodes and head, grants).
SQLAlchemy's execution of even a cached Core statement costs ~40-100 µs of Python per call on this
machine, the driver itself ~2 µs; the ledger writer runs ~9 per batch while holding the GIL that
every request also needs. A compiled statement keeps what SQLAlchemy decided for the dialect (the
SQL text, the parameter order, the literal values and the type processors, e.g. JSON), so the
semantics stay SQLAlchemy's and only its per-call machinery is skipped. It runs inside the caller's
transaction, on the same connection, whether the caller holds a Session or a Connection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql import Executable

Executor = Session | Connection


@dataclass(frozen=True)
class Compiled:
    sql: str
    defaults: dict[str, Any]  # the statement's own literal values (e.g. `WHERE id = 1`)
    binds: dict[str, Callable[[Any], Any]]  # type processors by parameter name (JSON → text, …)
    results: tuple[Callable[[Any], Any] | None, ...]  # per selected column (text → JSON, …)
    # positional styles (sqlite's qmark): each parameter's name and type processor, in order
    positions: tuple[tuple[str, Callable[[Any], Any] | None], ...] | None

    def params(self, values: Mapping[str, Any] | None) -> tuple | dict[str, Any]:
        # a statement with no literals of its own (the inserts) reads the row as given: no copy per row
        merged = {**self.defaults, **values} if values and self.defaults else (values or self.defaults)
        if self.positions is not None:
            return tuple([merged[name] if process is None else process(merged[name]) for name, process in self.positions])
        return {name: (self.binds[name](value) if name in self.binds else value) for name, value in merged.items()}

    def row(self, raw: Sequence[Any]) -> tuple:
        return tuple(value if p is None else p(value) for p, value in zip(self.results, raw, strict=True))


_cache: dict[tuple[int, str], Compiled] = {}


def compile_for(statement: Executable, dialect: Dialect) -> Compiled:
    """`statement` compiled for `dialect`, once (statements are module constants: keyed by identity)."""
    key = (id(statement), dialect.name)
    found = _cache.get(key)
    if found is None:
        compiled = statement.compile(dialect=dialect)
        binds = {name: p for name, bind in compiled.binds.items() if (p := _bind(bind.type, dialect))}
        columns = getattr(statement, "selected_columns", ())
        results = tuple(c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns)
        literals = {name: bind.effective_value for bind, name in compiled.bind_names.items() if not bind.required}
        order = compiled.positiontup
        positions = tuple((name, binds.get(name)) for name in order) if order is not None else None
        found = Compiled(compiled.string, literals, binds, results, positions)
        _cache[key] = found
    return found


def fetch(executor: Executor, statement: Executable, values: Mapping[str, Any] | None = None) -> list[tuple]:
    """Run a compiled statement in the executor's transaction; the rows (empty for writes)."""
    connection = _connection(executor)
    compiled = compile_for(statement, connection.dialect)
    with _driver_errors(connection, compiled) as cursor:
        cursor.execute(compiled.sql, compiled.params(values))
        rows = cursor.fetchall() if cursor.description else []
    return [compiled.row(r) for r in rows]


def execute_many(executor: Executor, statement: Executable, rows: Sequence[Mapping[str, Any]]) -> None:
    """One statement for many rows (inserts), in the executor's transaction."""
    if not rows:
        return
    connection = _connection(executor)
    compiled = compile_for(statement, connection.dialect)
    with _driver_errors(connection, compiled) as cursor:
        cursor.executemany(compiled.sql, [compiled.params(r) for r in rows])


def _connection(executor: Executor) -> Connection:
    return executor.connection() if isinstance(executor, Session) else executor


@contextmanager
def _driver_errors(connection: Connection, compiled: Compiled) -> Iterator[Any]:
    """A cursor whose driver errors surface as SQLAlchemy's (IntegrityError, OperationalError, …), as
    `Connection.execute` would raise them, so callers handle one family of errors."""
    cursor = connection.connection.driver_connection.cursor()
    try:
        yield cursor
    except connection.dialect.loaded_dbapi.Error as exc:
        raise DBAPIError.instance(compiled.sql, None, exc, connection.dialect.loaded_dbapi.Error) from exc
    finally:
        cursor.close()


def _bind(type_: Any, dialect: Dialect) -> Callable[[Any], Any] | None:
    return type_.dialect_impl(dialect).bind_processor(dialect)
