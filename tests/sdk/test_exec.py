"""`broker-exec`: the child gets the credential, its exit code comes back, the grant is completed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

BROKER_EXEC = str(Path(sys.executable).with_name("broker-exec"))
GRANT_OF_CHILD = "import os; print(os.environ['BROKER_GRANT_ID'], flush=True)"


def _run(live, token: str, *args: str, child: str, shell: bool = False) -> subprocess.CompletedProcess:  # noqa: ANN001
    program = ["sh", "-c", child] if shell else [sys.executable, "-c", child]
    command = [BROKER_EXEC, "--boundary", "orders", "--scope", "read", "--ttl", "2m", *args, "--", *program]
    env = {**os.environ, "BROKER_URL": live.url, "BROKER_IDENTITY_TOKEN": token}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    ("child", "code"),
    [
        ("echo $BROKER_GRANT_ID", 0),
        ("echo $BROKER_GRANT_ID; exit 3", 3),
        ("echo $BROKER_GRANT_ID; kill -KILL $$", 128 + 9),
        ("echo $BROKER_GRANT_ID; kill -SEGV $$", 128 + 11),
    ],
    ids=["success", "exit-3", "killed", "crashed"],
)
def test_exit_code_passes_through_and_the_grant_is_completed(live, worker_token, child, code) -> None:
    done = _run(live, worker_token, child=child, shell=True)
    assert done.returncode == code, done.stderr
    grant = live.grant(done.stdout.split()[0])
    assert (grant.status, grant.end_reason) == ("completed", "task completed")


def test_jwt_credential_names_in_the_child_environment(live, worker_token) -> None:
    child = "import os, json; print(json.dumps({k: v for k, v in os.environ.items() if k.startswith('BROKER_')}))"
    done = _run(live, worker_token, "--task", "migrate", child=child)
    seen = __import__("json").loads(done.stdout)
    assert seen["BROKER_TOKEN"].count(".") == 2 and seen["BROKER_TOKEN_TYPE"] == "DPoP"
    assert seen["BROKER_TASK"].startswith("migrate.") and "BROKER_IDENTITY_TOKEN" in seen
    assert live.grant(seen["BROKER_GRANT_ID"]).scopes == "read"


def test_file_mode_writes_a_0600_file_and_removes_it(live, worker_token, tmp_path) -> None:
    target = tmp_path / "cred.env"
    child = textwrap.dedent(
        """
        import os, stat
        path = os.environ["BROKER_CREDENTIAL_FILE"]
        print(oct(stat.S_IMODE(os.stat(path).st_mode)), "BROKER_TOKEN" in os.environ)
        print(open(path).read())
        """
    )
    done = _run(live, worker_token, "--file", str(target), child=child)
    mode, token_in_env = done.stdout.splitlines()[0].split()
    assert (mode, token_in_env) == ("0o600", "False")
    assert "BROKER_TOKEN='ey" in done.stdout
    assert not target.exists()


def test_signals_are_forwarded_to_the_child_and_its_code_returned(live, worker_token) -> None:
    child = textwrap.dedent(
        f"""
        import signal, sys, time
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(42))
        {GRANT_OF_CHILD}
        time.sleep(30)
        """
    )
    command = [BROKER_EXEC, "--boundary", "orders", "--scope", "read", "--", sys.executable, "-c", child]
    env = {**os.environ, "BROKER_URL": live.url, "BROKER_IDENTITY_TOKEN": worker_token}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    grant_id = proc.stdout.readline().strip()
    time.sleep(0.2)  # the child installs its handler before printing; the wrapper forwards from Popen on
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 42
    assert live.grant(grant_id).status == "completed"


@pytest.mark.parametrize(
    ("args", "code"),
    [(["--boundary", "nowhere"], 77), (["--url", "http://127.0.0.1:9"], 69)],
    ids=["refused", "unreachable"],
)
def test_broker_failures_never_run_the_child(live, worker_token, tmp_path, args, code) -> None:
    marker = tmp_path / "ran"
    done = _run(live, worker_token, *args, child=f"touch {marker}", shell=True)
    assert done.returncode == code and not marker.exists()
    assert worker_token not in done.stderr


def test_a_task_with_a_slash_is_completed(live, worker_token) -> None:
    child = "import os; print(os.environ['BROKER_GRANT_ID'], os.environ['BROKER_TASK'], flush=True)"
    done = _run(live, worker_token, "--task", "deploy/prod", child=child)
    assert done.returncode == 0, done.stderr
    grant_id, task = done.stdout.split()
    assert task.startswith("deploy/prod.")
    assert (live.grant(grant_id).status, live.grant(grant_id).end_reason) == ("completed", "task completed")
