"""Three `broker serve` replicas on one PostgreSQL under load: one log, one checkpoint sequence, one key,
pushed to a witness; the auditor verifies the database read-only against the witness's checkpoint."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from broker.cli import app as cli
from broker.transparency import checkpoint as cp
from broker.transparency import note, tree
from broker.transparency.log import LogReader
from tests.support.postgres import fresh_database
from tests.support.replicas import replica_config, serve_replicas
from tests.support.wait import wait_until
from tests.transparency.witnesses import running_witness


@pytest.mark.slow
def test_three_replicas_write_one_witnessed_log(tmp_path, issuers) -> None:
    with fresh_database() as url:
        config = replica_config(issuers, url, log_checkpoint_interval=0.2)
        with serve_replicas(tmp_path / "probe", config, count=1):  # migrates and makes the log key
            log_key = _log_key(config, tmp_path)
        with running_witness(tmp_path / "witness", log_key) as w:
            config["log_witnesses"] = [{"url": w.url, "key": w.key}]
            with serve_replicas(tmp_path / "replicas", config) as replicas:
                def grant(n: int) -> int:
                    body = {"task": f"t{n}", "boundary": "orders", "scopes": ["read"], "ttl": 60}
                    headers = {"Authorization": f"Bearer {issuers.worker()}"}
                    return httpx.post(replicas[n % 3].url + "/v1/grants", json=body, headers=headers, timeout=30).status_code

                with ThreadPoolExecutor(12) as pool:
                    assert set(pool.map(grant, range(120))) == {201}
                engine = create_engine(url)
                with engine.connect() as conn:
                    total = conn.execute(text("SELECT count(*) FROM audit_events")).scalar_one()
                wait_until(lambda: _witness_size(w.url) >= total, 60, "the witness catching up")
            verifier = note.Verifier.parse(log_key)
            with engine.connect() as conn:
                notes = [r.note for r in conn.execute(text("SELECT note FROM log_checkpoints ORDER BY size"))]
            reader, previous = LogReader(engine), None
            for signed in notes:  # every checkpoint verifies with the one log key and extends the previous one
                checkpoint, _ = cp.open_checkpoint(signed, verifier)
                if previous is not None:
                    proof = reader.consistency(previous.size, checkpoint.size)
                    tree.verify_consistency(previous.size, checkpoint.size, previous.root, checkpoint.root, proof)
                previous = checkpoint
            assert len(notes) >= 2 and previous.size == total
            args = ["audit", "verify", "--database-url", url, "--checkpoint", f"{w.url}/checkpoint", "--log-key", log_key,
                    "--witness-key", w.key]  # fmt: skip
            env = {"BROKER_ISSUER": "http://broker.test", "BROKER_ENV": "test",
                   "BROKER_KEY_ENCRYPTION_KEY": config["key_encryption_key"]}  # fmt: skip
            assert CliRunner().invoke(cli, args, env=env).exit_code == 0
            with engine.begin() as conn:
                conn.execute(text("UPDATE audit_events SET subject = 'someone-else' WHERE seq = 7"))
            done = CliRunner().invoke(cli, args, env=env)
            assert done.exit_code == 5 and "first bad index 6" in done.output
            engine.dispose()


def _log_key(config: dict, tmp_path) -> str:
    env = {"BROKER_ISSUER": config["issuer"], "BROKER_ENV": "test", "BROKER_DATABASE_URL": config["database_url"],
           "BROKER_KEY_ENCRYPTION_KEY": config["key_encryption_key"]}  # fmt: skip
    done = CliRunner().invoke(cli, ["log", "key", "--data-dir", str(tmp_path / "cli")], env=env)
    assert done.exit_code == 0, done.output
    return done.output.strip()


def _witness_size(url: str) -> int:
    answer = httpx.get(f"{url}/checkpoint")
    return int(answer.text.split("\n")[1]) if answer.status_code == 200 else 0
