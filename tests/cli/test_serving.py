"""How the broker is served: `broker serve` with one worker per core on uvloop and httptools, the
workers sharing one SQLite ledger and one hash chain; `broker dev` on the same loop and parser."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import yaml
from sqlalchemy import create_engine, func, select

from broker.cli.serve import default_workers
from broker.serving import MAX_HEAD_BYTES
from broker.ledger import AuditEvent
from broker.dev_openbao import free_port
from tests.support.broker import BOUNDARIES, BROKER_ISSUER, LOAD_TEST_LIMITS, POLICY
from tests.support.raw_http import connect, padded_head, read_to_close, refusal, send_all
from tests.support.wait import wait_serving, wait_until

BROKER = str(Path(sys.executable).with_name("broker"))
FAST_PARTS = ("uvloop/loop", "httptools/parser")  # the compiled modules, as mapped into a process


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except (OSError, ValueError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


def _maps(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return ""


def _serving_fast(pid: int) -> bool:
    maps = _maps(pid)
    return all(part in maps for part in FAST_PARTS)


def _fast_workers(proc: subprocess.Popen) -> int:
    return sum(_serving_fast(pid) for pid in _children(proc.pid))


@contextmanager
def served(tmp_path: Path, issuers, *extra: str) -> Iterator[tuple[str, subprocess.Popen, Path]]:  # noqa: ANN001
    config = {
        "env": "test", "issuer": BROKER_ISSUER, "data_dir": str(tmp_path / "data"), "attestors": issuers.attestors(),
        "boundaries": BOUNDARIES, "policy": POLICY, "worker_interval": 0.2, **LOAD_TEST_LIMITS,
    }  # fmt: skip
    path = tmp_path / "broker.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    proc = subprocess.Popen([BROKER, "serve", "--config", str(path), "--port", str(port), "--log-level", "warning",
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_serving(url, proc, "/healthz")
        yield url, proc, path
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_serve_runs_one_worker_per_core_on_uvloop_and_httptools(tmp_path, issuers) -> None:
    with served(tmp_path, issuers) as (_url, proc, _path):
        wait_until(lambda: _fast_workers(proc) == default_workers(), 60, "every worker serving")
        assert default_workers() == len(os.sched_getaffinity(0))


def test_serve_refuses_a_request_head_over_the_cap(tmp_path, issuers) -> None:
    with served(tmp_path, issuers) as (url, _proc, _path):
        sock = connect(url)
        send_all(sock, [padded_head(MAX_HEAD_BYTES + 1)])
        assert refusal(read_to_close(sock), 431)["code"] == "headers_too_large"
        assert httpx.get(f"{url}/healthz", headers={"X-Padding": "a" * 1000}).status_code == 200


def test_two_workers_keep_one_hash_chain_under_concurrent_load(tmp_path, issuers) -> None:
    grants, concurrency = 400, 24
    token = issuers.worker()
    with served(tmp_path, issuers, "--workers", "2") as (url, proc, path):
        wait_until(lambda: _fast_workers(proc) == 2, 60, "two workers serving")

        def issue(index: int) -> int:
            body = {"task": f"t-{index % 40}", "boundary": "orders", "scopes": ["read"], "ttl": 60}
            with httpx.Client(timeout=30) as client:  # a connection per request: the kernel spreads them
                return client.post(f"{url}/v1/grants", json=body, headers={"Authorization": f"Bearer {token}"}).status_code

        assert (tmp_path / "data" / "ledger-writer.sock").exists()  # both workers commit through one writer process
        assert len(_writer_processes(proc)) == 1
        with ThreadPoolExecutor(concurrency) as pool:
            statuses = list(pool.map(issue, range(grants)))
        assert statuses == [201] * grants
        keys = httpx.get(f"{url}/.well-known/jwks.json").json()["keys"]
        assert len(keys) == 1  # one first key, made before the workers forked
    verify = subprocess.run([BROKER, "audit", "verify", "--config", str(path)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = json.loads(verify.stdout.strip().splitlines()[-1])
    engine = create_engine(f"sqlite:///{tmp_path / 'data' / 'broker.db'}")
    with engine.connect() as conn:
        issued = conn.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.kind == "issued"))
        total = conn.scalar(select(func.count()).select_from(AuditEvent))
    engine.dispose()
    assert report["ok"] and issued == grants and report["checked"] == total


def _writer_processes(proc: subprocess.Popen) -> list[int]:
    """The spawned children that are not uvicorn workers (nor multiprocessing's resource tracker)."""
    return [pid for pid in _children(proc.pid)
            if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text() and not _serving_fast(pid)]  # fmt: skip


def test_two_workers_on_postgresql_commit_through_one_writer_process(tmp_path, issuers) -> None:
    """The writer process on a server database, with the data directory made by nothing else (keys in it)."""
    from tests.support.postgres import fresh_database
    from tests.support.replicas import replica_config

    with fresh_database() as database_url:
        config = {**replica_config(issuers, database_url), "data_dir": str(tmp_path / "a" / "d")}  # absent; short (a socket path)
        path = tmp_path / "broker.yaml"
        path.write_text(yaml.safe_dump(config))
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
        proc = subprocess.Popen([BROKER, "serve", "--config", str(path), "--port", str(port), "--log-level",
                                 "warning", "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env)  # fmt: skip
        url, token = f"http://127.0.0.1:{port}", issuers.worker()
        try:
            wait_serving(url, proc, "/healthz")
            wait_until(lambda: _fast_workers(proc) == 2, 60, "two workers serving")
            assert len(_writer_processes(proc)) == 1 and (tmp_path / "a" / "d" / "ledger-writer.sock").exists()
            body = {"task": "t", "boundary": "orders", "scopes": ["read"], "ttl": 60}
            with ThreadPoolExecutor(8) as pool:
                statuses = list(pool.map(lambda _: httpx.post(f"{url}/v1/grants", json=body, timeout=30,
                                                             headers={"Authorization": f"Bearer {token}"}).status_code,
                                         range(40)))  # fmt: skip
            assert statuses == [201] * 40
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, proc.stdout.read()
        verify = subprocess.run([BROKER, "audit", "verify", "--config", str(path)], capture_output=True, text=True,
                                env=env)  # fmt: skip
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert json.loads(verify.stdout.strip().splitlines()[-1])["checked"] >= 40


def test_one_worker_commits_on_its_own_thread(tmp_path, issuers) -> None:
    with served(tmp_path, issuers, "--workers", "1") as (url, proc, _path):
        body = {"task": "t", "boundary": "orders", "scopes": ["read"], "ttl": 60}
        answer = httpx.post(f"{url}/v1/grants", json=body, headers={"Authorization": f"Bearer {issuers.worker()}"})
        assert answer.status_code == 201
        assert not (tmp_path / "data" / "ledger-writer.sock").exists() and _writer_processes(proc) == []


def test_serve_stops_when_its_ledger_writer_process_dies(tmp_path, issuers) -> None:
    with served(tmp_path, issuers, "--workers", "2") as (url, proc, _path):
        wait_until(lambda: _fast_workers(proc) == 2, 60, "two workers serving")
        (writer,) = _writer_processes(proc)
        os.kill(writer, signal.SIGKILL)
        assert proc.wait(30) == 1  # never serving on without its ledger: the supervisor restarts it whole
        assert "the ledger writer process ended while serving" in proc.stdout.read()


def _sockets_of(pid: int, port: int) -> dict[str, int]:
    """This process's TCP sockets on `port` (local side), counted by state: LISTEN, ESTABLISHED."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    states = {"0A": "LISTEN", "01": "ESTABLISHED"}
    counts = {"LISTEN": 0, "ESTABLISHED": 0}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[9] in inodes and fields[3] in states:
                counts[states[fields[3]]] += 1
    return counts


def test_connections_opened_together_are_spread_over_the_workers(tmp_path, issuers) -> None:
    with served(tmp_path, issuers, "--workers", "2") as (url, proc, _path):
        wait_until(lambda: _fast_workers(proc) == 2, 60, "two workers serving")
        port = int(url.rsplit(":", 1)[1])
        workers = [pid for pid in _children(proc.pid) if _serving_fast(pid)]
        assert [_sockets_of(pid, port)["LISTEN"] for pid in workers] == [1, 1]  # a socket each (SO_REUSEPORT)
        assert _sockets_of(proc.pid, port)["LISTEN"] == 0  # the supervisor holds the address, never listens
        clients = [httpx.Client(timeout=30) for _ in range(32)]  # 32 keep-alive connections, opened at once
        try:
            with ThreadPoolExecutor(32) as pool:
                assert set(pool.map(lambda c: c.get(f"{url}/healthz").status_code, clients)) == {200}
            held = [_sockets_of(pid, port)["ESTABLISHED"] for pid in workers]
        finally:
            for client in clients:
                client.close()
    assert sum(held) == 32 and min(held) > 0, held  # one worker alone: 2 ** -31 by the kernel's hash


def test_a_serving_app_freezes_what_start_up_built_and_a_test_app_does_not(tmp_path, issuers) -> None:
    from fastapi.testclient import TestClient

    from broker.app import build, create_app
    from tests.support.broker import broker_settings

    gc.unfreeze()
    settings = broker_settings(tmp_path / "data", issuers)
    try:
        with TestClient(create_app(settings, build(settings))) as client:
            assert client.get("/healthz").status_code == 200 and gc.get_freeze_count() == 0
        with TestClient(create_app(settings, build(settings), freeze_gc=True)) as client:  # as app_from_env builds it
            assert client.get("/healthz").status_code == 200 and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_dev_serves_on_uvloop_and_httptools(tmp_path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    proc = subprocess.Popen([BROKER, "dev", "--no-vault", "--port", str(port), "--data-dir", str(tmp_path / ".broker")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip
    try:
        wait_serving(f"http://127.0.0.1:{port}", proc, "/healthz")
        assert _serving_fast(proc.pid)  # one process: the loop and parser are in it once it answers
    finally:
        proc.terminate()
        proc.wait(30)
