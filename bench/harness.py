"""The bench harness: `wrk` (a C load client, keep-alive) and real processes to aim it at.

`wrk_run()` drives one request shape (a Lua script: method, path, headers, body) at a fixed number
of keep-alive connections for a bounded duration and returns rate, p50, p99 and the CPU the server
processes spent (user + sys from /proc, parent and children). `BrokerServer` runs the broker under
uvicorn in a subprocess from a config file in a temp dir; `openbao` runs `bao server -dev`.
`load()` (httpx, asyncio) remains for bench/replicas.py, which round-robins over several URLs.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
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

LEVELS = (1, 16, 32)
BROKER = str(Path(sys.executable).with_name("broker"))  # the CLI of this venv
Send = Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]
TICK = os.sysconf("SC_CLK_TCK")


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
    p50_ms: float | None = None  # given by wrk (which keeps its own histogram) instead of `latencies`
    p99_ms: float | None = None
    cpu_seconds: float | None = None  # user + sys of the server's processes during the run
    ratio: float | None = None  # rate / the matching OpenBao row's rate

    @property
    def rate(self) -> float:
        if self.rate_override is not None:
            return self.rate_override
        return (self.requests - self.errors) / self.elapsed if self.elapsed else 0.0

    @property
    def cpu_ms_per_request(self) -> float | None:
        done = self.requests - self.errors
        return 1000 * self.cpu_seconds / done if self.cpu_seconds is not None and done > 0 else None

    def percentile(self, q: float) -> float | None:
        """Latency percentile in ms (nearest rank), or None when nothing was timed."""
        given = {0.5: self.p50_ms, 0.99: self.p99_ms}.get(q)
        if given is not None:
            return given
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


# --- CPU of a process tree --------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def process_tree(root: int) -> list[int]:
    """`root` and every descendant (uvicorn's workers are children of its supervisor)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None:
            parents.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += parents.get(pid, [])
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time these processes have used so far (fields 14 and 15 of /proc/<pid>/stat)."""
    total = 0
    for pid in pids:
        if (fields := _stat(pid)) is not None:
            total += int(fields[11]) + int(fields[12])
    return total / TICK


# --- wrk --------------------------------------------------------------------------------------


def ensure_wrk() -> str:
    """The `wrk` binary; installed from the Debian package when missing and we are root, else a clear error."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SystemExit("bench: `wrk` is not installed; install the Debian package `wrk` (apt-get install wrk)")
    print("bench: installing wrk (apt-get install -y wrk)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], env=env, capture_output=True, check=True)
    return shutil.which("wrk") or "wrk"


@dataclass(frozen=True)
class Shape:
    """One HTTP request as wrk sends it; `{n}` in the body becomes a per-request counter."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    authorizations: tuple[str, ...] = ()  # Authorization values taken in turn, one a request (many workloads)


def _lua(shape: Shape) -> str:
    quote = _lua_string
    headers = "\n".join(f"wrk.headers[{quote(k)}] = {quote(v)}" for k, v in shape.headers.items())
    turns = (f"local auths = {{{', '.join(quote(a) for a in shape.authorizations)}}}\n"
             if shape.authorizations else "")  # fmt: skip
    take_turn = "  wrk.headers['Authorization'] = auths[n % #auths + 1]\n" if shape.authorizations else ""
    request = (
        # a fresh counter per request (e.g. a new task per grant); per wrk thread, prefixed by its id
        f"local n = 0\nlocal body = {quote(shape.body)}\n{turns}"
        "function setup(thread) thread:set('tid', tostring(math.random(1, 1e9))) end\n"
        f"function request()\n  n = n + 1\n{take_turn}"
        "  return wrk.format(nil, nil, nil, (body:gsub('{n}', (tid or '0') .. '-' .. n)))\nend\n"
        if "{n}" in shape.body or shape.authorizations
        else f"wrk.body = {quote(shape.body)}\n"
    )
    done = (
        "function done(summary, latency, requests)\n"
        "  local e = summary.errors\n"
        "  io.write(string.format('WRKJSON {\"requests\":%d,\"duration_us\":%d,\"status\":%d,"
        "\"socket\":%d,\"p50_us\":%d,\"p99_us\":%d}\\n', summary.requests, summary.duration, e.status,"
        " e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(99)))\nend\n"
    )
    return f"wrk.method = {quote(shape.method)}\n{headers}\n{request}{done}"


def _lua_string(value: str) -> str:
    return json.dumps(value)  # an ASCII JSON string is a valid Lua string literal


def wrk_run(scenario: str, shape: Shape, connections: int, seconds: float, *, server_pid: int | None = None) -> Result:
    """Run wrk (1 thread, `connections` keep-alive connections) for `seconds`; CPU of the server's tree."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_lua(shape))
    pids = process_tree(server_pid) if server_pid else []
    before = cpu_seconds(pids)
    try:
        out = subprocess.run(
            [ensure_wrk(), "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", script.name,
             shape.url], capture_output=True, text=True, timeout=seconds + 60,
        )  # fmt: skip
    finally:
        os.unlink(script.name)
    spent = cpu_seconds(pids) - before if pids else None
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        return Result(scenario, connections, note=f"wrk failed: {(out.stderr or out.stdout).strip()[-60:]}")
    data = json.loads(line[len("WRKJSON "):])
    return Result(
        scenario, connections, requests=data["requests"], errors=data["status"] + data["socket"],
        elapsed=data["duration_us"] / 1e6, p50_ms=data["p50_us"] / 1000, p99_ms=data["p99_us"] / 1000,
        cpu_seconds=spent,
    )  # fmt: skip


def wrk_sweep(scenario: str, shape: Shape, *, seconds: float, server_pid: int | None, levels=LEVELS) -> list[Result]:
    """A short unmeasured warm-up, then each connection level for `seconds`."""
    wrk_run("warm-up", shape, 4, 1, server_pid=None)
    return [wrk_run(scenario, shape, level, seconds, server_pid=server_pid) for level in levels]


# --- httpx load (bench/replicas.py) -----------------------------------------------------------


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
def broker_server(directory: Path, config: dict[str, Any], *, workers: int | None = None) -> Iterator[BrokerServer]:
    """Write the config, create keys and schema once (so workers do not race), `broker serve`, stop.

    `workers=None` takes `broker serve`'s own default (one per core), as production would.
    """
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "broker.yaml"
    data = directory / "data"
    # a production broker names its database; the bench's is the SQLite file it measures (FULL sync)
    config = {"issuer": f"http://127.0.0.1:{port}", "data_dir": str(data), "database_url": f"sqlite:///{data / 'broker.db'}",
              **config}  # fmt: skip
    path.write_text(yaml.safe_dump(config))
    settings = load_settings(path)
    open_keys(settings)
    open_ledger(settings).engine.dispose()
    command = [BROKER, "serve", "--config", str(path), "--port", str(port),
               "--log-level", "warning", *(["--workers", str(workers)] if workers else [])]  # fmt: skip
    proc = subprocess.Popen(command)
    try:
        _wait_http(f"http://127.0.0.1:{port}/readyz", proc)
        yield BrokerServer(f"http://127.0.0.1:{port}", proc, path)
    finally:
        _stop(proc)


def audit_verify(server: BrokerServer, *extra: str) -> dict[str, Any]:
    """`broker audit verify` (offline, the CLI an operator runs) of the ledger a broker filled; `extra`:
    more options (e.g. `--checkpoint`, `--log-key`, `--witness-key`)."""
    out = subprocess.run([BROKER, "audit", "verify", "--config", str(server.config_path), *extra], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"ok": False, "checked": 0, "problem": (out.stderr or out.stdout)[-120:]}


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
