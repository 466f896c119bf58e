"""The README quickstart runs against `broker dev` (what `make run` starts: OpenBao, PostgreSQL, demo boundaries)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.dev_openbao import free_port
from tests.sdk.docs import ROOT, blocks, run_block
from tests.support.wait import wait_serving

README = ROOT / "clients" / "python" / "README.md"
MAKE_RUN_URL = "http://127.0.0.1:8080"


@pytest.fixture(scope="module")
def dev_broker(tmp_path_factory) -> Iterator[tuple[Path, str]]:
    """`broker dev` in a subprocess; its data dir is `.broker` under the folder the README runs in."""
    folder = tmp_path_factory.mktemp("readme")
    port = free_port()
    broker = str(Path(sys.executable).with_name("broker"))
    log = (folder / "dev.log").open("w")
    proc = subprocess.Popen([broker, "dev", "--port", str(port)], cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_serving(url, proc, timeout=90, log=folder / "dev.log")
        yield folder, url
    finally:
        proc.send_signal(signal.SIGTERM)  # dev mode stops its OpenBao on SIGTERM
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_readme_quickstart_runs_against_make_run(dev_broker) -> None:
    folder, url = dev_broker
    found = blocks(README)
    setup = found[0][1].replace(MAKE_RUN_URL, url)  # `make run` listens on 8080; the test on a free port
    assert "BROKER_IDENTITY_TOKEN" in setup
    for lang, code in found[1:]:
        script = code if lang == "sh" else f"python -c {shlex.quote(code)}"
        done = run_block("sh", f"cd {shlex.quote(str(folder))}\n{setup}\n{script}", {"BROKER_URL": ""})
        assert done.returncode == 0, f"{code}\n---\n{done.stdout}\n{done.stderr[-2000:]}"
        if "print(client.get" in code:
            assert done.stdout.strip().endswith("completed") and "sha256:" in done.stdout
        if "psql" in code:
            # PGUSER/PGPASSWORD/PGHOST/... from the vault_secret grant; VAULT_* from the vault_token one
            assert done.stdout.splitlines()[0] == "1" and "vault at http://127.0.0.1:" in done.stdout


def test_broker_exec_hands_a_working_vault_token_and_revokes_it(dev_broker) -> None:
    folder, url = dev_broker
    token = subprocess.run(
        [str(Path(sys.executable).with_name("broker")), "dev-token", "--subject", "dev:demo-workload"],
        cwd=folder, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    bao = str(Path(sys.executable).with_name("bao"))
    # the token reads its boundary's secret (no `default` policy, so not `token lookup`)
    child = f"{bao} read -format=json secret/data/demo/hello >/dev/null && echo $VAULT_TOKEN"
    env = {**os.environ, "BROKER_URL": url, "BROKER_IDENTITY_TOKEN": token}
    done = subprocess.run(
        [str(Path(sys.executable).with_name("broker-exec")), "--boundary", "demo-kv", "--scope", "read", "--",
         "sh", "-c", child], env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    vault_token = done.stdout.strip()
    addr = next(line.split()[1] for line in (folder / "dev.log").read_text().splitlines() if "openbao:" in line)
    after = subprocess.run([bao, "read", "secret/data/demo/hello"], env={**os.environ, "VAULT_ADDR": addr, "VAULT_TOKEN": vault_token},
                           capture_output=True, text=True, timeout=20, check=False)  # fmt: skip
    assert after.returncode != 0, "the Vault token still works after broker-exec completed its grant"
