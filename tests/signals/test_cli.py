"""`broker signals` as an operator runs it: the real command, offline, against the broker's data directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from broker.dev_openbao import free_port
from tests.signals.conftest import auth
from tests.support.wait import wait_until

BROKER = str(Path(sys.executable).with_name("broker"))
PUSH, POLL = "urn:ietf:rfc:8935", "urn:ietf:rfc:8936"


def _stream(broker, subject: str, delivery: dict) -> dict:
    answer = broker.post("/ssf/streams", json={"delivery": delivery, "boundaries": ["orders"]},
                         headers=auth(broker.issuers.oidc.token(sub=subject)))  # fmt: skip
    assert answer.status_code == 201, answer.text
    return answer.json()


def _failed_once(broker, stream_id: str, timeout: float = 10) -> None:
    failed = lambda: any(r["stream_id"] == stream_id and r["failed"] for r in broker.components.signals.outbox.lag())  # noqa: E731
    wait_until(failed, timeout=timeout, what="a failed push to the dead endpoint", interval=0.05)


def _signals(data_dir: Path, *args: str, COLUMNS: str = "250") -> subprocess.CompletedProcess:
    env = {"PATH": str(Path(sys.executable).parent), "COLUMNS": COLUMNS, "HOME": str(data_dir)}
    return subprocess.run([BROKER, "signals", "--data-dir", str(data_dir), *args], capture_output=True, text=True,
                          env=env, timeout=180, check=False)  # fmt: skip


def test_broker_signals_shows_each_streams_lag_and_last_error(broker, issuers, tmp_path) -> None:
    broker.issuers = issuers
    dead = f"http://127.0.0.1:{free_port()}/ssf/events"  # nothing listens there
    push = _stream(broker, "receiver-a", {"method": PUSH, "endpoint_url": dead})
    poll = _stream(broker, "receiver-b", {"method": POLL})
    grant = broker.grant(issuers.worker(), task="t-cli").json()
    assert broker.post(f"/v1/grants/{grant['grant_id']}/complete", headers=auth(issuers.worker())).status_code == 200
    _failed_once(broker, push["stream_id"])

    done = _signals(tmp_path, "--json")
    assert done.returncode == 0, done.stderr
    streams = lambda out: {(r["stream_id"], r["owner"]) for r in map(json.loads, out.splitlines())}  # noqa: E731
    assert streams(_signals(tmp_path, "-o", "json").stdout) == streams(done.stdout)  # the word every command takes
    rows = {r["stream_id"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert rows.keys() == {push["stream_id"], poll["stream_id"]}
    assert rows[push["stream_id"]]["pending"] == 1 and rows[push["stream_id"]]["failed"] >= 1
    assert rows[push["stream_id"]]["last_error"].startswith("unreachable")
    assert rows[push["stream_id"]]["owner"] == "receiver-a"
    assert (rows[poll["stream_id"]]["pending"], rows[poll["stream_id"]]["failed"]) == (1, 0)

    table = _signals(tmp_path)
    assert table.returncode == 0, table.stderr
    line = next(x for x in table.stdout.splitlines() if push["stream_id"] in x)
    assert "push" in line and "unreachable" in line
    assert any(poll["stream_id"] in x and "poll" in x for x in table.stdout.splitlines())
    narrow = _signals(tmp_path, COLUMNS="40")  # stream ids and receivers stay whole on their line
    assert any(push["stream_id"] in x and "receiver-a" in x for x in narrow.stdout.splitlines()), narrow.stdout


def test_broker_signals_with_no_streams_says_so(broker, tmp_path) -> None:
    done = _signals(tmp_path)
    assert done.returncode == 0 and "no signal streams" in done.stdout, done.stderr
    assert _signals(tmp_path, "--json").stdout == ""
