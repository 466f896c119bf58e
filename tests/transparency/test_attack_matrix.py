"""The attack matrix: `broker audit verify` against the witness's checkpoint catches each tampering,
and the witness refuses the tampered broker's next checkpoint whenever the tree itself was changed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from broker.cli import app as cli
from tests.support.broker import broker_settings, open_client
from tests.transparency.attacks import COLUMNS, cover_up
from tests.transparency.witnesses import running_witness


def _round(broker, issuers, tasks: list[str]) -> None:
    for task in tasks:
        assert broker.grant(issuers.worker(), task=task, ttl=60).status_code == 201
    broker.components.log.checkpointer.maybe_sign(force=True)
    broker.components.log.witnesses.run()


def _edit(db: str, backup: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE audit_events SET subject = 'someone-else' WHERE seq = 3")


def _delete_middle(db: str, backup: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM audit_events WHERE seq = 4")


def _delete_tail(db: str, backup: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM audit_events WHERE seq > 6")
    cover_up(db)  # ledger_head, the chain and the stored tree all fixed


def _rewrite(db: str, backup: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE audit_events SET subject = 'someone-else' WHERE seq >= 5")
    cover_up(db)


def _truncate_regrow(db: str, backup: str) -> None:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(f"SELECT {', '.join(COLUMNS)}, prev_hash, hash FROM audit_events WHERE seq > 5").fetchall()
        conn.execute("DELETE FROM audit_events WHERE seq > 5")
        for row in rows:  # forged events to the old size, new ids
            conn.execute(f"INSERT INTO audit_events ({', '.join(COLUMNS)}, prev_hash, hash) VALUES ({', '.join('?' * 12)})",
                         (row[0], row[1][::-1], row[2], "denied", "forged", *row[5:]))  # fmt: skip
    cover_up(db)


def _restore_backup(db: str, backup: str) -> None:
    with sqlite3.connect(backup) as src, sqlite3.connect(db) as dst:
        src.backup(dst)


ATTACKS = [("edit-row", _edit, 2, False), ("delete-middle", _delete_middle, 3, False),
           ("delete-tail-fix-head", _delete_tail, 6, True), ("rewrite-from-k", _rewrite, None, True),
           ("truncate-regrow", _truncate_regrow, None, True), ("restore-old-backup", _restore_backup, 3, True)]  # fmt: skip


def _verify(data_dir: Path, checkpoint: str, log_key: str, witness_key: str):  # noqa: ANN202
    args = ["audit", "verify", "--data-dir", str(data_dir), "--checkpoint", checkpoint, "--log-key", log_key,
            "--witness-key", witness_key]  # fmt: skip
    return CliRunner().invoke(cli, args, env={"BROKER_ISSUER": "http://broker.test", "BROKER_ENV": "test"})


@pytest.mark.parametrize(("attack", "index", "tree_changed"), [a[1:] for a in ATTACKS], ids=[a[0] for a in ATTACKS])
def test_each_attack_is_caught_against_the_witness(tmp_path, issuers, caplog, attack, index, tree_changed) -> None:
    data = tmp_path / "broker"
    with open_client(broker_settings(data, issuers)) as probe:
        log_key = probe.components.log.verifier().key_string()
    with running_witness(tmp_path / "witness", log_key) as w:
        settings = broker_settings(data, issuers, log_witnesses=[{"url": w.url, "key": w.key}])
        with open_client(settings) as broker:
            _round(broker, issuers, ["t1", "t2", "t3"])
            backup = str(tmp_path / "backup.db")
            with sqlite3.connect(data / "broker.db") as src, sqlite3.connect(backup) as dst:
                src.backup(dst)  # an honest backup at 3 events
            _round(broker, issuers, [f"t{n}" for n in range(4, 13)])
        witnessed = f"{w.url}/checkpoint"
        assert _verify(data, witnessed, log_key, w.key).exit_code == 0

        attack(str(data / "broker.db"), backup)
        done = _verify(data, witnessed, log_key, w.key)
        assert done.exit_code == 5, done.output
        assert f"TAMPERED: first bad index {index if index is not None else 'unknown'}" in done.output

        with open_client(settings) as broker:  # the tampered broker carries on and offers its next checkpoint
            _round(broker, issuers, ["t-next"])
            refused = broker.get("/readyz").json()["log_witnesses"]["witness.test/w1"]
        if tree_changed:
            assert "HTTP 409" in refused or "HTTP 422" in refused
        # whatever the broker did next, the witness still holds the checkpoint the audit is made against
        assert httpx.get(witnessed).text.split("\n")[1] != "0"


def test_usage_and_unreadable_inputs_have_their_own_exit_codes(tmp_path, issuers) -> None:
    with open_client(broker_settings(tmp_path, issuers)) as broker:
        _round(broker, issuers, ["t1"])
        note = broker.get("/v1/log/checkpoint").text
        log_key = broker.components.log.verifier().key_string()
    (tmp_path / "cp").write_text(note)
    env = {"BROKER_ISSUER": "http://broker.test", "BROKER_ENV": "test"}
    run = lambda *a: CliRunner().invoke(cli, ["audit", "verify", *a], env=env)  # noqa: E731
    assert run("--data-dir", str(tmp_path), "--checkpoint", str(tmp_path / "cp"), "--log-key", log_key).exit_code == 0
    assert run("--data-dir", str(tmp_path), "--checkpoint", str(tmp_path / "cp")).exit_code == 2
    assert run("--data-dir", str(tmp_path), "--checkpoint", str(tmp_path / "cp"), "--log-key", "nope").exit_code == 2
    assert run("--data-dir", str(tmp_path), "--checkpoint", str(tmp_path / "missing"), "--log-key", log_key).exit_code == 1
    empty = tmp_path / "empty"
    done = run("--data-dir", str(empty), "--checkpoint", str(tmp_path / "cp"), "--log-key", log_key)
    assert done.exit_code == 1 and not (empty / "broker.db").exists()  # read-only: nothing created
    other = run("--data-dir", str(tmp_path), "--checkpoint", str(tmp_path / "cp"), "--log-key", log_key,
                "--witness-key", "w+00000000+BAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")  # fmt: skip
    assert other.exit_code in (2, 5)
