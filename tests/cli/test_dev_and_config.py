"""A newcomer's path: `broker dev`, `broker dev-token`, a grant used and completed; config errors that name the field."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import jwt
import pytest
from typer.testing import CliRunner

from broker.cli import app
from broker.dev_openbao import free_port
from tests.support.wait import wait_serving, wait_until

BROKER = str(Path(sys.executable).with_name("broker"))


@pytest.fixture
def dev_broker(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    data_dir = tmp_path / ".broker"  # the default name, so the README's commands find it from tmp_path
    proc = subprocess.Popen(
        [BROKER, "dev", "--port", str(port), "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_serving(url, proc, "/healthz")
        yield url, data_dir
    finally:
        proc.terminate()
        proc.wait(30)


def dev_token(data_dir: Path, subject: str) -> str:
    out = subprocess.run(
        [BROKER, "dev-token", "--subject", subject, "--data-dir", str(data_dir)], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_dev_mode_issues_uses_and_completes_a_credential(dev_broker):
    url, data_dir = dev_broker
    headers = {"Authorization": f"Bearer {dev_token(data_dir, 'dev:demo-workload')}"}
    body = {"task": "hello", "boundary": "demo", "scopes": ["read"], "ttl": 300}
    grant = httpx.post(f"{url}/v1/grants", json=body, headers=headers).json()
    token = grant["credential"]["token"]
    jwks = httpx.get(f"{url}/.well-known/jwks.json").json()
    key = jwt.PyJWK(next(k for k in jwks["keys"] if k["kid"] == jwt.get_unverified_header(token)["kid"]))
    claims = jwt.decode(token, key, algorithms=["ES256"], audience="demo", issuer=url)
    assert claims["sub"] == "dev:demo-workload" and claims["scope"] == "read"
    for subject, active in (("dev:resource-server", True), ("dev:operator", False)):  # RFC 7662 §4: role, not rank
        caller = {"Authorization": f"Bearer {dev_token(data_dir, subject)}"}
        assert httpx.post(f"{url}/oauth/introspect", data={"token": token}, headers=caller).json()["active"] is active
    done = httpx.post(f"{url}/v1/grants/{grant['grant_id']}/complete", headers=headers)
    assert done.json()["status"] == "completed"
    active = httpx.post(f"{url}/oauth/introspect", data={"token": token}, headers=headers).json()["active"]
    assert active is False
    keys = list((data_dir / "keys").glob("*.json")) + [data_dir / "dev-issuer" / "key.pem"]
    assert keys and all(oct(p.stat().st_mode & 0o777) == "0o600" for p in keys)


def test_dev_mode_prints_every_thread_on_sigusr1_and_stops_on_sigterm(tmp_path):
    """An operator's view into a broker that will not stop, without stopping it; then SIGTERM ends it."""
    port, log = free_port(), tmp_path / "dev.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    with log.open("w") as out:
        proc = subprocess.Popen([BROKER, "dev", "--no-vault", "--port", str(port), "--data-dir", str(tmp_path / "d")],
                                stdout=out, stderr=subprocess.STDOUT, env=env)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_serving(url, proc, "/healthz", log=log)
        proc.send_signal(signal.SIGUSR1)
        # every thread, not only the main one; waited for, since the dump is written thread by thread
        wait_until(lambda: log.read_text().count("most recent call first") >= 2, 30, "every thread's stack in the log")
        assert httpx.get(f"{url}/healthz").status_code == 200  # still serving
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 143
    finally:
        proc.kill()
        proc.wait(10)


def test_dev_mode_is_refused_in_production(tmp_path):
    env = {**os.environ, "BROKER_ENV": "production"}
    result = subprocess.run([BROKER, "dev", "--data-dir", str(tmp_path)], capture_output=True, text=True, env=env)
    assert result.returncode == 2 and "BROKER_ENV=production" in result.stderr


BAD_CONFIGS = [
    ("bad-alg", "attestors:\n  - {name: k, preset: oidc, issuer: 'https://i', audiences: [b], algorithms: [HS256]}\n",
     "attestors.0.algorithms"),
    ("bad-ttl", "boundaries:\n  - {name: db, backend: jwt, scopes: [read], max_ttl: forever}\n", "boundaries.0.max_ttl"),
    ("unknown-key", "boundaries:\n  - {name: db, backend: jwt, scopes: [read], colour: red}\n", "boundaries.0.colour"),
    ("shared-role", "boundaries:\n"
     "  - {name: a, backend: vault_token, scopes: {read: {token_role: r1}}}\n"
     "  - {name: b, backend: vault_token, scopes: {read: {token_role: r1}}}\n", "boundaries 'a' and 'b' share"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_config_errors_name_the_file_and_field(tmp_path, text, expected):
    config = tmp_path / "broker.yaml"
    config.write_text(text)
    result = CliRunner().invoke(app, ["keys", "list", "--config", str(config)])
    assert result.exit_code == 2
    assert str(config) in result.output and expected in result.output


def readme_block() -> str:
    text = (Path(__file__).parents[2] / "README.md").read_text()
    after = text.split("In a second terminal", 1)[1]
    return after.split("```sh\n", 1)[1].split("```", 1)[0]


def test_readme_quickstart_runs_as_written(dev_broker):
    url, data_dir = dev_broker
    script = "set -euo pipefail\n" + readme_block().replace("http://127.0.0.1:8080", url)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-c", script], cwd=data_dir.parent, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert '"keys"' in result.stdout and '"active":true' in result.stdout
    assert result.stdout.rstrip().endswith('{"active":false}')
