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


def _run(live, token: str, *args: str, child: str, timeout: float = 30) -> subprocess.CompletedProcess:  # noqa: ANN001
    command = [BROKER_EXEC, "--boundary", "orders", "--scope", "read", "--ttl", "2m", *args,
               "--", sys.executable, "-c", child]  # fmt: skip
    env = {**os.environ, "BROKER_URL": live.url, "BROKER_IDENTITY_TOKEN": token}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.parametrize(
    ("child", "code"),
    [
        (f"{GRANT_OF_CHILD}", 0),
        (f"{GRANT_OF_CHILD}; raise SystemExit(3)", 3),
        (f"{GRANT_OF_CHILD}; import os, signal; os.kill(os.getpid(), signal.SIGKILL)", 128 + 9),
        (f"{GRANT_OF_CHILD}; import ctypes; ctypes.string_at(0)", 128 + 11),
    ],
    ids=["success", "exit-3", "killed", "segfault"],
)
def test_exit_code_passes_through_and_the_grant_is_completed(live, worker_token, child, code) -> None:
    done = _run(live, worker_token, child=child)
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
    done = _run(live, worker_token, *args, child=f"open({str(marker)!r}, 'w')")
    assert done.returncode == code and not marker.exists()
    assert worker_token not in done.stderr
