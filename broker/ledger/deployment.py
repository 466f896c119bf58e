"""The deployment id: which broker deployment minted a backend credential (stamped in its metadata).

Configured (`deployment_id`), or derived once at first start-up and stored in the ledger database,
so it survives restarts and every replica on the same database reads the same one.
"""

from __future__ import annotations

import secrets

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from broker.ledger.models import Setting

NAME = "deployment_id"


def deployment_id(engine: Engine, configured: str | None = None) -> str:
    """The configured id, else the stored one, else a new random one stored now (the first replica wins)."""
    if configured:
        return configured
    with Session(engine) as session:
        stored = session.scalar(select(Setting.value).where(Setting.name == NAME))
        if stored:
            return stored
        session.add(Setting(name=NAME, value="d-" + secrets.token_hex(8)))
        try:
            session.commit()
        except IntegrityError:  # another replica stored one first: use theirs
            session.rollback()
        return str(session.scalar(select(Setting.value).where(Setting.name == NAME)))
