"""Several `broker serve` processes on loopback sharing one ledger database, as behind a load balancer.

Usage::

    with fresh_database() as url, serve_replicas(tmp_path, replica_config(issuers, url), count=3) as replicas:
        httpx.post(replicas[0].url + "/v1/grants", ...)
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.broker import BOUNDARIES, BROKER_ISSUER, LOAD_TEST_LIMITS, POLICY, Issuers


def replica_config(issuers: Issuers, database_url: str, **overrides: Any) -> dict[str, Any]:
    """One config for every replica: same issuer, database, policy and key-encryption key."""
    return {
        "env": "test",
        "issuer": BROKER_ISSUER,
        "database_url": database_url,
        "key_encryption_key": base64.b64encode(secrets.token_bytes(32)).decode(),
        "attestors": issuers.attestors(),
        "boundaries": BOUNDARIES,
        "policy": POLICY,
        "worker_interval": 0.2,
        "db_pool_size": 8,
        "db_max_overflow": 8,
        **LOAD_TEST_LIMITS,
        **overrides,
    }


@dataclass(frozen=True)
class Replica:
    """One `broker serve` process and its base URL."""

    url: str
    proc: subprocess.Popen


@contextmanager
def serve_replicas(directory: Path, config: dict[str, Any], count: int = 3) -> Iterator[list[Replica]]:
    """Start `count` replicas at once (they race to migrate and to create the first key), yield them."""
    with ExitStack() as stack:
        started = [_start(directory / f"replica-{i}", config) for i in range(count)]
        for replica in started:
            stack.callback(_stop, replica.proc)
        for replica in started:
            _wait_ready(replica.url, replica.proc)
        yield started


def _start(directory: Path, config: dict[str, Any]) -> Replica:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "broker.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(directory / "data"), **config}))
    port = _free_port()
    log = open(directory / "serve.log", "wb")  # noqa: SIM115 (the process owns it until it exits)
    broker = Path(sys.executable).with_name("broker")
    proc = subprocess.Popen(
        # one worker per replica: a replica stands for one pod here (serve's default is one per core)
        [str(broker), "serve", "--config", str(path), "--port", str(port), "--log-level", "warning", "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "BROKER_CONFIG": str(path)},
    )  # fmt: skip
    log.close()
    return Replica(f"http://127.0.0.1:{port}", proc)


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"replica at {url} exited with {proc.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=2.0, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"replica at {url} not ready within {timeout}s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
