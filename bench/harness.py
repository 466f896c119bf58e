"""The bench harness: a bounded async load generator, and real processes to aim it at.

`load()` drives one HTTP request shape at a fixed concurrency with httpx over loopback, stopping at
a request count or a time cap, whichever comes first. `BrokerServer` runs the broker under uvicorn
in a subprocess from a config file in a temp dir; `openbao` runs `bao server -dev`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from broker.app import open_keys, open_ledger
from broker.config import load_settings
from broker.dev_openbao import OpenBaoServer, free_port

LEVELS = (1, 8, 32, 64)
Send = Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]


@dataclass
class Result:
    """One row of the table: a scenario at one concurrency."""

    scenario: str
    concurrency: int
    requests: int = 0
    errors: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list, repr=False)
    rate_override: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""

    @property
    def rate(self) -> float:
        if self.rate_override is not None:
            return self.rate_override
        return (self.requests - self.errors) / self.elapsed if self.elapsed else 0.0

    def percentile(self, q: float) -> float | None:
        """Latency percentile in ms (nearest rank), or None when nothing was timed."""
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


# --- load ------------------------------------------------------------------------------------


async def _drive(client: httpx.AsyncClient, send: Send, result: Result, count: int, deadline: float, ok: set) -> None:
    while result.requests < count and time.perf_counter() < deadline:
        index = result.requests
        result.requests += 1
        started = time.perf_counter()
        try:
            response = await send(client, index)
            good = response.status_code in ok
        except httpx.HTTPError:
            good = False
        result.latencies.append(time.perf_counter() - started)
        result.errors += 0 if good else 1


async def _load(send: Send, result: Result, *, count: int, time_cap: float, warmup: int, ok: set) -> Result:
    limits = httpx.Limits(max_connections=result.concurrency, max_keepalive_connections=result.concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30.0, trust_env=False) as client:
        for i in range(warmup):
            await send(client, -1 - i)
        started = time.perf_counter()
        deadline = started + time_cap
        workers = [_drive(client, send, result, count, deadline, ok) for _ in range(result.concurrency)]
        await asyncio.gather(*workers)
        result.elapsed = time.perf_counter() - started
    return result


def load(
    scenario: str, send: Send, concurrency: int, *, count: int, time_cap: float, warmup: int = 20, ok=(200, 201, 204)
) -> Result:
    """Run `send` `count` times (or until `time_cap` s) from `concurrency` clients; latency per request."""
    result = Result(scenario, concurrency)
    return asyncio.run(_load(send, result, count=count, time_cap=time_cap, warmup=warmup, ok=set(ok)))


def sweep(scenario: str, send: Send, *, count: int, time_cap: float, levels=LEVELS, **kw: Any) -> list[Result]:
    return [load(scenario, send, level, count=count, time_cap=time_cap, **kw) for level in levels]


# --- processes -------------------------------------------------------------------------------


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Poll until `url` answers 200; the last answer goes into the error when it never does."""
    deadline, last = time.monotonic() + timeout, "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before {url} answered")
        try:
            response = httpx.get(url, timeout=2.0, trust_env=False)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready within {timeout}s: {last}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class BrokerServer:
    """A broker under uvicorn in a subprocess, configured by a YAML file in `directory`."""

    url: str
    proc: subprocess.Popen
    config_path: Path


@contextmanager
def broker_server(directory: Path, config: dict[str, Any], *, workers: int = 2) -> Iterator[BrokerServer]:
    """Write the config, create keys and schema once (so workers do not race), serve, stop.

    uvicorn's own defaults pick the event loop and HTTP parser, as `broker serve` does.
    """
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "broker.yaml"
    config = {"issuer": f"http://127.0.0.1:{port}", "data_dir": str(directory / "data"), **config}
    path.write_text(yaml.safe_dump(config))
    settings = load_settings(path)
    open_keys(settings)
    open_ledger(settings).engine.dispose()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "broker.app:app_from_env", "--factory", "--host", "127.0.0.1",
         "--port", str(port), "--workers", str(workers), "--no-access-log", "--log-level", "warning"],
        env={**os.environ, "BROKER_CONFIG": str(path)},
    )  # fmt: skip
    try:
        _wait_http(f"http://127.0.0.1:{port}/readyz", proc)
        yield BrokerServer(f"http://127.0.0.1:{port}", proc, path)
    finally:
        _stop(proc)


@contextmanager
def openbao(directory: Path) -> Iterator[OpenBaoServer]:
    """OpenBao's dev server from the `bao` binary (broker/dev_openbao.py), stopped afterwards."""
    directory.mkdir(parents=True, exist_ok=True)
    server = OpenBaoServer(log_path=directory / "bao.log").start()
    try:
        yield server
    finally:
        server.stop()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0
