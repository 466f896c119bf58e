"""Where a jwt grant's time goes: `py-spy record --gil` of one broker worker under wrk, summarised.

    python -m bench.profile [--seconds 10] [--connections 32] [--boundary jwt|vault_token|vault_secret]

One `broker serve --workers 1` (SQLite FULL, a jwt boundary; for `vault_token` and `vault_secret`
also an OpenBao dev server set up as `make bench` does, and PostgreSQL for `vault_secret`), wrk at
`connections` keep-alive connections for the whole sampling window, py-spy sampling only while a thread holds the GIL
(`--gil`: Python work, not waiting). Prints the share of GIL samples under each part of the path
(a sample counts once per part whose frame is on its stack; parts overlap where they nest) and the
functions with the most samples of their own. Environment: BENCH_PROFILE_RAW (keep the raw stacks
there), BENCH_PROFILE_RATE (samples per second, 250), BENCH_PROFILE_MODE (py-spy flags, `--gil`).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import subprocess
import tempfile
import threading
from pathlib import Path

from bench import scenarios as sc
from bench.harness import broker_server, cpu_seconds, ensure_wrk, wrk_run
from broker.dev_openbao import OpenBaoServer
from tests.support.issuer import TestIssuer

BOUNDARIES = {"jwt": sc.JWT_BOUNDARY, "vault_token": "bench-vault-token", "vault_secret": "bench-vault-secret"}

# part of the path -> substrings of a frame ("function (file:line)") that belong to it
PARTS = {
    "HTTP server (uvicorn, httptools, loop)": ("uvicorn/", "httptools", "uvloop", "asyncio/"),
    "FastAPI/Starlette routing + middleware": ("starlette/", "fastapi/routing", "fastapi/applications"),
    "FastAPI dependency solving": ("fastapi/dependencies",),
    "request/response models (pydantic)": ("pydantic", "fastapi/encoders", "fastapi/_compat"),
    "thread-pool hops (anyio)": ("anyio/",),
    "identity verification (broker/identity)": ("broker/identity/",),
    "policy": ("broker/policy/",),
    "signing (broker/signing, PyJWT)": ("broker/signing/", "jwt/"),
    "ledger (broker/ledger)": ("broker/ledger/",),
    "SQLAlchemy + sqlite3": ("sqlalchemy/", "sqlite3"),
    "grants use case (service.py)": ("broker/grants/service.py",),
    "metrics (prometheus_client)": ("prometheus_client",),
    "Vault calls (broker/backends/vault*, hvac, urllib3)": ("broker/backends/vault", "hvac/", "urllib3/",
                                                            "http/client"),  # fmt: skip
}


def summarise(raw: Path, top: int = 15) -> str:
    """The collapsed stacks py-spy wrote (`frame;frame;... count`) as shares of all GIL samples."""
    parts: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count, frames = int(count_text), stack.split(";")
        total += count
        own[frames[-1]] += count
        for part, needles in PARTS.items():
            if any(needle in frame for frame in frames for needle in needles):
                parts[part] += count
    if not total:
        return "no samples"
    lines = [f"{total} GIL samples; share of samples with each part on the stack:"]
    lines += [f"  {100 * n / total:5.1f} %  {part}" for part, n in parts.most_common()]
    lines.append("functions with the most samples of their own:")
    lines += [f"  {100 * n / total:5.1f} %  {frame[:110]}" for frame, n in own.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--boundary", choices=sorted(BOUNDARIES), default="jwt", help="the grants' backend")
    args = parser.parse_args(argv)
    ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp_name, TestIssuer() as issuer, \
            contextlib.ExitStack() as stack:  # fmt: skip
        tmp = Path(tmp_name)
        vault_on = args.boundary != "jwt"
        config = sc.broker_config(issuer, boundaries=[sc.jwt_boundary(), *(sc.vault_boundaries() if vault_on else [])])
        if vault_on:
            bao = OpenBaoServer(log_path=tmp / "openbao.log").start()
            stack.callback(bao.stop)
            config["vault"] = bao.vault_config()
            sc.setup_vault(bao, config, issuer)
        with broker_server(tmp / "broker", config, workers=1) as broker:
            shape = sc.grant_request(broker.url, sc.identity_token(issuer), BOUNDARIES[args.boundary])
            wrk_run("warm-up", shape, 4, 1)
            results = []
            load = threading.Thread(target=lambda: results.append(
                wrk_run("load", shape, args.connections, args.seconds + 2, server_pid=broker.proc.pid)))
            load.start()
            raw = Path(os.environ.get("BENCH_PROFILE_RAW", str(tmp / "profile.txt")))
            py_spy = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "py-spy"
            before = cpu_seconds([broker.proc.pid])
            subprocess.run([str(py_spy if py_spy.exists() else "py-spy"), "record", *os.environ.get("BENCH_PROFILE_MODE", "--gil").split(), "--pid",
                            str(broker.proc.pid), "--duration", str(int(args.seconds)), "--rate", os.environ.get("BENCH_PROFILE_RATE", "250"),
                            "--format", "raw", "--output", str(raw), "--nonblocking"],
                           check=True, capture_output=True)  # fmt: skip
            spent = cpu_seconds([broker.proc.pid]) - before
            load.join()
        row = results[0]
        print(f"load ({args.boundary}): {row.rate:,.0f} grants/s at {args.connections} connections, "
              f"p99 {row.percentile(0.99):.1f} ms, "
              f"{1000 * spent / max(1, row.rate * args.seconds):.2f} CPU-ms per grant (1 worker)")  # fmt: skip
        print(summarise(raw))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
