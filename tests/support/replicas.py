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
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from broker.dev_openbao import free_port
from tests.support.broker import BOUNDARIES, BROKER_ISSUER, LOAD_TEST_LIMITS, POLICY, Issuers
from tests.support.wait import wait_serving


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
        started = [start_replica(directory / f"replica-{i}", config) for i in range(count)]
        for replica in started:
            stack.callback(stop_process, replica.proc)
        for replica in started:
            wait_serving(replica.url, replica.proc)
        yield started


def start_replica(directory: Path, config: dict[str, Any]) -> Replica:
    """One `broker serve` process on a free port, its config and log in `directory`; not waited for."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "broker.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(directory / "data"), **config}))
    port = free_port()
    log = open(directory / "serve.log", "wb")  # noqa: SIM115 (the process owns it until it exits)
    broker = Path(sys.executable).with_name("broker")
    proc = subprocess.Popen(
        # one worker per replica: a replica stands for one pod here (serve's default is one per core)
        [str(broker), "serve", "--config", str(path), "--port", str(port), "--log-level", "warning", "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "BROKER_CONFIG": str(path)},
    )  # fmt: skip
    log.close()
    return Replica(f"http://127.0.0.1:{port}", proc)


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 20 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
