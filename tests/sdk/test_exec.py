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
from broker_client.exec import IDENTITY_ENV

BROKER_EXEC = str(Path(sys.executable).with_name("broker-exec"))
GRANT_OF_CHILD = "import os; print(os.environ['BROKER_GRANT_ID'], flush=True)"


def _run(live, token: str, *args: str, child: str, shell: bool = False) -> subprocess.CompletedProcess:
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
    assert seen["BROKER_TASK"].startswith("migrate.") and "BROKER_IDENTITY_TOKEN" not in seen
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


def test_help_lists_the_exit_codes() -> None:
    shown = subprocess.run([BROKER_EXEC, "--help"], capture_output=True, text=True, check=True).stdout
    for line in ("69   broker unreachable", "77   refused", "73   the --file", "127  command not found", "64   no identity"):
        assert line in shown, line


def test_the_child_never_inherits_the_identity_source(live, worker_token, tmp_path) -> None:
    """aws-vault's rule: the command gets the credential, never what minted it (it could ask for more)."""
    sources = {"ACTIONS_ID_TOKEN_REQUEST_URL": "http://127.0.0.1:9/token", "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "runner",
               "BROKER_K8S_TOKEN_FILE": str(tmp_path / "k8s"), "BROKER_SPIFFE_JWT_FILE": str(tmp_path / "svid")}  # fmt: skip
    child = "import os, json; print(json.dumps(dict(os.environ)))"
    command = [BROKER_EXEC, "--boundary", "orders", "--scope", "read", "--", sys.executable, "-c", child]
    env = {**os.environ, **sources, "BROKER_URL": live.url, "BROKER_IDENTITY_TOKEN": worker_token}
    for mode in ([], ["--file", str(tmp_path / "cred.env")]):
        done = subprocess.run([*command[:5], *mode, *command[5:]], env=env, capture_output=True, text=True, timeout=60,
                              check=False)  # fmt: skip
        seen = __import__("json").loads(done.stdout)
        assert not IDENTITY_ENV & set(seen) and set(sources) <= IDENTITY_ENV
        assert worker_token not in done.stdout and "BROKER_GRANT_ID" in seen


def _routes(caplog) -> list[tuple[str, str, int]]:
    return [(r.method, r.route, r.status) for r in caplog.records if r.name == "broker.access"]


def test_a_refused_grant_makes_no_complete_call(live, worker_token, caplog) -> None:
    caplog.set_level("INFO", logger="broker.access")
    done = _run(live, worker_token, "--boundary", "nowhere", child="true", shell=True)
    assert done.returncode == 77 and "not completed" not in done.stderr, done.stderr
    routes = _routes(caplog)
    assert [status for method, route, status in routes if (method, route) == ("POST", "/v1/grants")] == [400]
    assert not [r for r in routes if r[1].endswith("/complete")], routes


def test_an_unreachable_broker_says_so(live, worker_token) -> None:
    done = _run(live, worker_token, "--url", "http://127.0.0.1:9", child="true", shell=True)
    assert done.returncode == 69
    assert "cannot reach the broker at http://127.0.0.1:9" in done.stderr and "not completed" not in done.stderr


def test_env_mode_says_when_the_credential_expired_under_a_running_child(live, worker_token) -> None:
    child = f"{GRANT_OF_CHILD}; import time; time.sleep(3.5)"
    done = _run(live, worker_token, "--ttl", "2", child=child)
    assert done.returncode == 0, done.stderr
    assert "expired at" in done.stderr and "cannot renew an environment: use --file" in done.stderr
    assert live.grant(done.stdout.split()[0]).status in ("completed", "expired")


RENEWED_CHILD = textwrap.dedent(
    """
    import os, signal, stat, sys, time
    path, seen = os.environ["BROKER_CREDENTIAL_FILE"], []

    def grant_in_file():
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        lines = dict(line.split("=", 1) for line in open(path).read().splitlines())
        return lines["BROKER_GRANT_ID"].strip("'")

    signal.signal(signal.SIGUSR1, lambda *_: seen.append(grant_in_file()))
    seen.append(grant_in_file())
    deadline = time.monotonic() + 20
    while len(seen) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    print(" ".join(seen), os.stat(path).st_ino, flush=True)
    """
)


def test_file_mode_renews_before_expiry_replaces_the_file_and_signals_the_child(live, worker_token, tmp_path) -> None:
    """spiffe-helper's contract: fresh files before the old ones expire, swapped whole, then a signal."""
    target = tmp_path / "cred.env"
    done = _run(live, worker_token, "--ttl", "3", "--file", str(target), "--renew-signal", "USR1", child=RENEWED_CHILD)
    assert done.returncode == 0, done.stderr
    *grants, _inode = done.stdout.split()
    assert len(grants) == 3 and len(set(grants)) == 3, grants  # the first credential, then two renewals
    rows = [live.grant(g) for g in grants]
    assert len({row.task for row in rows}) == 1  # one task: its completion ends them all
    assert all(row.status in ("completed", "expired") for row in rows) and rows[-1].status == "completed"
    assert rows[0].expires_at > rows[0].issued_at and not target.exists()
    assert not list(tmp_path.glob(".cred.env.*"))  # no temporary file left behind


def test_renew_signal_needs_file_mode() -> None:
    done = subprocess.run([BROKER_EXEC, "--boundary", "orders", "--scope", "read", "--renew-signal", "HUP", "--", "true"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 2 and "--renew-signal needs --file" in done.stderr
