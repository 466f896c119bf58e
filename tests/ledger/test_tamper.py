"""`broker audit verify` catches an edited, deleted or reordered ledger row (SQLite edited directly)."""

from __future__ import annotations

import sqlite3

import pytest
from typer.testing import CliRunner

from broker.cli import app
from tests.support.broker import broker_settings, open_client


def _fill(tmp_path, issuers) -> str:
    with open_client(broker_settings(tmp_path, issuers)) as client:
        for n in range(4):
            client.grant(issuers.worker(), task=f"t{n}", ttl=60)
        client.grant("bogus")
    return str(tmp_path / "broker.db")


def _edit(db: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE audit_events SET subject = 'someone-else' WHERE seq = 2")


def _delete_middle(db: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM audit_events WHERE seq = 3")


def _delete_last(db: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM audit_events WHERE seq = (SELECT max(seq) FROM audit_events)")


def _reorder(db: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE audit_events SET seq = -1 WHERE seq = 2")
        conn.execute("UPDATE audit_events SET seq = 2 WHERE seq = 3")
        conn.execute("UPDATE audit_events SET seq = 3 WHERE seq = -1")


def _edit_detail(db: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("""UPDATE audit_events SET detail = '{"code":"ok"}' WHERE kind = 'denied'""")


TAMPERING = [("edit", _edit, 2), ("delete-middle", _delete_middle, 4), ("delete-last", _delete_last, 5),
             ("reorder", _reorder, 2), ("edit-detail", _edit_detail, 5)]  # fmt: skip


def test_intact_ledger_verifies(tmp_path, issuers):
    _fill(tmp_path, issuers)
    result = CliRunner().invoke(app, ["audit", "verify", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert '"ok": true' in result.output and '"checked": 5' in result.output


@pytest.mark.parametrize(("tamper", "bad_seq"), [t[1:] for t in TAMPERING], ids=[t[0] for t in TAMPERING])
def test_tampering_is_caught_naming_the_first_bad_row(tmp_path, issuers, tamper, bad_seq):
    db = _fill(tmp_path, issuers)
    tamper(db)
    result = CliRunner().invoke(app, ["audit", "verify", "--data-dir", str(tmp_path)])
    assert result.exit_code == 5  # tampered (the CLI's exit codes)
    assert f"first bad row seq={bad_seq}" in result.output
