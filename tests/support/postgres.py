"""A fresh PostgreSQL database per test run on the machine's server (127.0.0.1:5432), dropped afterwards."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, text

SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"


@contextmanager
def fresh_database(prefix: str = "broker_test") -> Iterator[str]:
    """Create `<prefix>_<random>`, yield its SQLAlchemy URL, drop it (closing stray connections)."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    admin = create_engine(f"{SERVER}/test", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield f"{SERVER}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def ledger_database(kind: str) -> Iterator[dict[str, Any]]:
    """Broker settings for a ledger on `kind`: "sqlite" (the default: nothing to add) or "postgresql" (a
    fresh database, with the key encryption key that keeps signing keys in it)."""
    if kind == "sqlite":
        yield {}
        return
    with fresh_database() as url:
        yield {"database_url": url, "key_encryption_key": secrets.token_hex(32)}
