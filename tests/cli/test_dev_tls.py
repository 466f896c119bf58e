"""`broker dev --tls` as a developer runs it: HTTPS on its port, a client certificate asked for, never required.

The broker, `broker dev-svid`, `broker dev-token` and `broker-exec --svid-dir` are the installed commands,
each its own process; the only shared thing is the data directory, as on a developer's machine.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from broker.dev_openbao import free_port
from tests.support.wait import wait_until

BIN = Path(sys.executable).parent
SUBJECT = "spiffe://dev.local/ns/demo/sa/worker"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}


def _run(*args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=120, check=False,
                          env={**_env(), **extra})  # fmt: skip


@pytest.fixture
def dev_tls(tmp_path) -> Iterator[tuple[str, Path]]:
    port, data_dir = free_port(), tmp_path / ".broker"
    proc = subprocess.Popen([str(BIN / "broker"), "dev", "--tls", "--no-vault", "--port", str(port), "--data-dir",
                             str(data_dir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())  # fmt: skip
    url = f"https://127.0.0.1:{port}"
    try:
        def serving() -> bool:  # verify=False only for the wait: the tests verify against the dev bundle
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else "broker exited"
            try:
                return httpx.get(f"{url}/healthz", verify=False, timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(serving, timeout=60, what="broker dev --tls", interval=0.2)
        yield url, data_dir
    finally:
        proc.terminate()
        proc.wait(30)


def _svid(data_dir: Path, out: Path) -> Path:
    done = _run("broker", "dev-svid", "--subject", SUBJECT, "--out", str(out), "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stderr
    return out


def _client(svid_dir: Path, *, with_cert: bool) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(svid_dir / "bundle.pem"))  # the dev CA signs the server too
    if with_cert:
        context.load_cert_chain(svid_dir / "svid.pem", svid_dir / "svid_key.pem")
    return httpx.Client(verify=context, timeout=10)


def test_dev_tls_serves_https_with_and_without_a_client_certificate(dev_tls, tmp_path) -> None:
    url, data_dir = dev_tls
    svid_dir = _svid(data_dir, tmp_path / "svid")
    body = {"task": "t-tls", "boundary": "demo", "scopes": ["read"], "ttl": 60}
    with pytest.raises(httpx.HTTPError):
        httpx.get(url.replace("https:", "http:") + "/healthz", timeout=5)  # HTTPS only on the port

    with _client(svid_dir, with_cert=False) as anonymous:
        assert anonymous.get(f"{url}/healthz").status_code == 200  # no certificate: still served
        refused = anonymous.post(f"{url}/v1/grants", json=body)
        assert refused.status_code == 401 and refused.headers["content-type"] == "application/problem+json"
        token = _run("broker", "dev-token", "--subject", "dev:demo-workload", "--data-dir", str(data_dir)).stdout.strip()
        bearer = anonymous.post(f"{url}/v1/grants", json={**body, "task": "t-bearer"},
                                headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        assert bearer.status_code == 201, bearer.text
        assert "cnf" not in jwt.decode(bearer.json()["credential"]["token"], options={"verify_signature": False})

    with _client(svid_dir, with_cert=True) as workload:
        made = workload.post(f"{url}/v1/grants", json=body)
        assert made.status_code == 201, made.text
        claims = jwt.decode(made.json()["credential"]["token"], options={"verify_signature": False})
        assert claims["sub"] == SUBJECT and "x5t#S256" in claims["cnf"]
        done = workload.post(f"{url}/v1/grants/{made.json()['grant_id']}/complete")
        assert done.status_code == 200 and done.json()["status"] == "completed"


def test_broker_exec_with_an_svid_dir_end_to_end(dev_tls, tmp_path) -> None:
    url, data_dir = dev_tls
    svid_dir = _svid(data_dir, tmp_path / "svid")
    script = 'test -n "$BROKER_TOKEN" && printf "%s" "$BROKER_GRANT_ID" > "$OUT"'
    done = _run("broker-exec", "--svid-dir", str(svid_dir), "--url", url, "--boundary", "demo", "--scope", "read",
                "--ttl", "60", "--", "sh", "-c", script, OUT=str(tmp_path / "grant"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    grant_id = (tmp_path / "grant").read_text()
    with _client(svid_dir, with_cert=True) as workload:  # the owner reads its grant back over the same SVID
        grant = workload.get(f"{url}/v1/grants/{grant_id}")
    assert grant.status_code == 200, grant.text
    assert grant.json()["status"] == "completed" and grant.json()["boundary"] == "demo"
    failed = _run("broker-exec", "--svid-dir", str(svid_dir), "--url", url, "--boundary", "demo", "--scope", "read",
                  "--", "sh", "-c", "exit 7")  # fmt: skip
    assert failed.returncode == 7  # the child's status is broker-exec's
    missing = _run("broker-exec", "--svid-dir", str(tmp_path / "nowhere"), "--url", url, "--boundary", "demo",
                   "--scope", "read", "--", "true")  # fmt: skip
    assert missing.returncode != 0 and "nowhere" in missing.stderr
