"""`broker audit verify --checkpoint FILE|URL --log-key K [--witness-key W …]`: offline and read-only.

Exit codes: 0 verified, 5 tampered (the first bad index printed), 1 cannot read, 2 usage.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from sqlalchemy import Engine, create_engine, inspect
from sqlalchemy.exc import SQLAlchemyError

from broker.config import Settings

VERIFIED, CANNOT_READ, USAGE, TAMPERED = 0, 1, 2, 5


def verify_against_checkpoint(
    settings: Settings, source: str, log_key: str | None, witness_keys: list[str],
    show: Callable[[dict[str, Any]], None] = lambda report: typer.echo(json.dumps(report)),
) -> None:  # fmt: skip
    from broker.transparency.audit import open_and_check, verify_ledger
    from broker.transparency.checkpoint import CosignatureVerifier
    from broker.transparency.note import NoteError, Verifier

    if not log_key:
        _fail(USAGE, "--checkpoint needs --log-key (the log's verifier key, `broker log key`)")
    try:
        verifier, witnesses = Verifier.parse(log_key), [CosignatureVerifier.parse(k) for k in witness_keys]
    except NoteError as exc:
        _fail(USAGE, f"bad key: {exc}")
    note = _read(source)
    try:
        checkpoint, cosigned = open_and_check(note, verifier, witnesses)
    except NoteError as exc:
        _fail(TAMPERED, f"TAMPERED: the checkpoint does not verify: {exc}")
    engine = _read_only(settings)
    try:
        with engine.connect() as conn:
            if not {"audit_events", "log_nodes", "grants"} <= set(inspect(conn).get_table_names()):
                _fail(CANNOT_READ, "error: not a broker ledger (tables missing); nothing was created")
            report = verify_ledger(conn, checkpoint, verifier)
    except SQLAlchemyError as exc:
        _fail(CANNOT_READ, f"error: cannot read the ledger: {type(exc).__name__}")
    finally:
        engine.dispose()
    show({**report.as_dict(), "witnesses": cosigned})
    if not report.ok:
        first = report.first
        index = first.index if first.index is not None else "unknown"
        _fail(TAMPERED, f"TAMPERED: first bad index {index}: {first.problem}")
    typer.echo(f"verified: {report.ledger_size} events extend checkpoint {checkpoint.size} "
               f"({', '.join(cosigned) or 'no witness required'})", err=True)  # fmt: skip


def _read(source: str) -> str:
    if source.startswith(("http://", "https://")):
        import httpx

        try:
            answer = httpx.get(source, timeout=10.0)
        except httpx.HTTPError as exc:
            _fail(CANNOT_READ, f"error: cannot fetch {source}: {type(exc).__name__}")
        if answer.status_code != 200:
            _fail(CANNOT_READ, f"error: {source} answered HTTP {answer.status_code}")
        return answer.text
    try:
        return Path(source).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        _fail(CANNOT_READ, f"error: cannot read {source}: {exc}")


def _read_only(settings: Settings) -> Engine:
    """An engine that cannot write: SQLite opened read-only (a missing file is an error), PostgreSQL read-only."""
    url = settings.database
    if url.startswith("sqlite"):
        path = Path(url.split(":///", 1)[1])
        if not path.is_file():
            _fail(CANNOT_READ, f"error: no ledger at {path}")
        return create_engine(f"sqlite:///file:{path.resolve()}?mode=ro&uri=true")
    return create_engine(url, execution_options={"postgresql_readonly": True})


def _fail(code: int, message: str) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(code)
