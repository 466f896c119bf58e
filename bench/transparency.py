"""What the transparency log's witnessing costs a jwt grant: a witness on vs off, in one run.

    python -m bench.transparency [--seconds 5] [--quick]

The broker runs as `broker serve` does (a subprocess, its default workers, SQLite FULL, jwt
boundary). The log itself is never off: every ledger event is a leaf appended in the issuing
transaction, so the rows compare what an operator can choose, a witness (`broker witness`, the
real tlog-witness server, on loopback in this process) that every signed checkpoint is pushed to
through the outbox. Off and on alternate twice on the same ledger (the machine's drift hits both
alike); each row is the median of its two runs. Afterwards `broker audit verify` proves the ledger
against the witness's cosigned checkpoint, so the "on" rows were really witnessed.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from pathlib import Path

import httpx

from bench.harness import BROKER, Result, audit_verify, broker_server, wrk_run
from bench.scenarios import JWT_BOUNDARY, broker_config, grant_request, identity_token, jwt_boundary
from tests.support.issuer import TestIssuer
from tests.support.wait import wait_until
from tests.transparency.witnesses import running_witness

CONNECTIONS = 16


def rows(seconds: float) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="bench-log-") as tmp, TestIssuer() as issuer:
        folder, token = Path(tmp), identity_token(issuer)
        # one ledger across the restarts: one issuer (the log's origin is named after it), whatever the port
        config = {**broker_config(issuer, boundaries=[jwt_boundary()]), "issuer": "https://broker.bench"}
        with broker_server(folder / "broker", config) as broker:
            log_key = _broker_cli("log", "key", "--config", str(broker.config_path))
        with running_witness(folder / "witness", log_key) as witness:
            witnessed = {**config, "log_witnesses": [{"url": witness.url, "key": witness.key}],
                         "log_checkpoint_interval": 1.0}  # fmt: skip
            runs: dict[bool, list[Result]] = {False: [], True: []}
            for on in (False, True, False, True):
                with broker_server(folder / "broker", witnessed if on else config) as broker:
                    shape = grant_request(broker.url, token, JWT_BOUNDARY)
                    wrk_run("warm-up", shape, 4, 1, server_pid=None)
                    runs[on].append(wrk_run("jwt grant", shape, CONNECTIONS, seconds, server_pid=broker.proc.pid))
                    if on:
                        _wait_cosigned(witness.url)
            report = audit_verify(broker, "--checkpoint", f"{witness.url}/checkpoint", "--log-key", log_key,
                                  "--witness-key", witness.key)  # fmt: skip
    off, on = _median(runs[False], "jwt grant, log witness off"), _median(runs[True], "jwt grant, log witness on")
    on.ratio = on.rate / off.rate if off.rate else None
    on.target, on.met = "on ÷ off >= 0.95 (the log costs <= 5 %)", bool(on.ratio and on.ratio >= 0.95)
    shown = {k: report[k] for k in ("ok", "checkpoint_size", "ledger_size", "problem") if k in report}
    audit = Result("broker audit verify against the witness's checkpoint", 0, note=str(shown)[:80], met=bool(report.get("ok")))
    return [off, on, audit]


def _median(results: list[Result], name: str) -> Result:
    """The runs as one row: median rate and p50, the worst p99, CPU per grant over all of them."""
    return Result(name, CONNECTIONS, requests=sum(r.requests for r in results), errors=sum(r.errors for r in results),
                  rate_override=statistics.median(r.rate for r in results),
                  p50_ms=statistics.median(r.p50_ms or 0 for r in results), p99_ms=max(r.p99_ms or 0 for r in results),
                  cpu_seconds=sum(r.cpu_seconds or 0 for r in results), elapsed=sum(r.elapsed for r in results))  # fmt: skip


def _wait_cosigned(url: str) -> None:
    """The witness holds a checkpoint (the broker pushed at least one and it was cosigned)."""
    wait_until(lambda: httpx.get(f"{url}/checkpoint", timeout=2).status_code == 200, timeout=15,
               what="the witness's first cosigned checkpoint")  # fmt: skip


def _broker_cli(*args: str) -> str:
    done = subprocess.run([BROKER, *args], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"broker {' '.join(args[:2])} exited {done.returncode}: {done.stderr[-200:]}")
    return done.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    from bench.__main__ import table

    print(table(rows(1.0 if args.quick else args.seconds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
