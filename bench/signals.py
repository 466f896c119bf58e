"""Pushed revocation (Shared Signals): how soon a resource server refuses a revoked token, and fan-out.

    python -m bench.signals [--seconds 5] [--quick]

The broker runs as `broker serve` does (a subprocess, its default workers, SQLite ledger, jwt
boundary); each receiver is a FastAPI resource server under uvicorn on loopback with the SDK's
`SignalMiddleware` + `SignalReceiver` (push, RFC 8935) and an offline `Verifier`.

- revoke → refusal: issue a grant (untimed), then time from the operator's `POST /v1/revocations`
  (`grant_id`) until the receiver has taken its `session-revoked` SET (from then on it refuses the
  token: each one is then checked to answer 401, an error otherwise). One revocation at a time.
- fan-out: N grants issued, then one operator revocation of the boundary ends all of them; time from
  the request until each of 3 receivers has all N SETs (each stream the same order, none twice: checked).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
from broker_client import SignalReceiver, Verifier

from bench.harness import Result, broker_server
from bench.scenarios import JWT_BOUNDARY, broker_config, identity_token, jwt_boundary
from broker.dev_openbao import free_port
from tests.signals.serve import resource_server, serving
from tests.support.issuer import TestIssuer

OPERATOR_NS, RECEIVER_NS = "bench-ops", "bench-rs"


class Arrivals:
    """What one receiver's app saw: the grant ids of its session-revoked SETs, in order, with arrival times."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.at: dict[str, float] = {}
        self.cond = threading.Condition()

    def __call__(self, claims: dict) -> None:
        jti = (claims.get("sub_id", {}).get("session") or {}).get("jti")
        if jti is None:
            return
        with self.cond:
            self.order.append(jti)
            self.at.setdefault(jti, time.perf_counter())
            self.cond.notify_all()

    def wait(self, predicate, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout)


def config(issuer: TestIssuer) -> dict:
    made = broker_config(issuer, boundaries=[jwt_boundary()], env="development")
    made["policy"]["rules"] += [
        {"name": "bench-operators", "match": {"attestor": "k8s", "subject": f"system:serviceaccount:{OPERATOR_NS}:admin"},
         "roles": ["operator"]},
        {"name": "bench-receivers", "match": {"attestor": "k8s", "subject": f"system:serviceaccount:{RECEIVER_NS}:*"},
         "roles": ["signal_receiver"]},
    ]  # fmt: skip
    return made | {"signal_push_allow_http": True}


@contextmanager
def receivers(url: str, issuer: TestIssuer, count: int) -> Iterator[list[tuple[str, Arrivals]]]:
    """`count` resource servers, each with its own push stream; yields (its URL, what it received)."""
    with ExitStack() as stack:
        made = []
        for index in range(count):
            port, seen = free_port(), Arrivals()
            token = issuer.k8s_token(RECEIVER_NS, f"r{index}", lifetime=3600)
            receiver = SignalReceiver(url, identity=lambda t=token: t, boundaries=[JWT_BOUNDARY], on_event=seen,
                                      endpoint_url=f"http://127.0.0.1:{port}/ssf/events")  # fmt: skip
            receiver.register()
            app = resource_server(receiver, Verifier(url, JWT_BOUNDARY))
            made.append((stack.enter_context(serving(app, port)), seen))
            stack.callback(receiver.delete)
        yield made


def _grant(http: httpx.Client, token: str, task: str) -> dict:
    body = {"task": task, "boundary": JWT_BOUNDARY, "scopes": ["read"], "ttl": 600}
    answer = http.post("/v1/grants", json=body, headers={"Authorization": f"Bearer {token}"})
    answer.raise_for_status()
    return answer.json()


def _revoke(http: httpx.Client, operator: str, **selector: str) -> None:
    answer = http.post("/v1/revocations", json={**selector, "reason": "bench"}, headers={"Authorization": f"Bearer {operator}"})
    answer.raise_for_status()


def refusal_row(url: str, issuer: TestIssuer, count: int, seconds: float) -> Result:
    worker, operator = identity_token(issuer), issuer.k8s_token(OPERATOR_NS, "admin", lifetime=3600)
    result = Result("revoke → refusal at a receiver (push)", 1)
    with receivers(url, issuer, 1) as [(rs, seen)], httpx.Client(base_url=url, timeout=30) as http, \
            httpx.Client(base_url=rs, timeout=10) as server:  # fmt: skip
        deadline = time.perf_counter() + seconds
        for index in range(count):
            if time.perf_counter() > deadline:
                break
            grant = _grant(http, worker, f"refusal-{index}")
            jti, bearer = grant["grant_id"], {"Authorization": f"Bearer {grant['credential']['token']}"}
            started = time.perf_counter()
            _revoke(http, operator, grant_id=jti)
            arrived = seen.wait(lambda j=jti: j in seen.at, 10)
            result.requests += 1
            if not arrived or server.get("/orders", headers=bearer).status_code != 401:
                result.errors += 1
                continue
            result.latencies.append(seen.at[jti] - started)
        result.elapsed = sum(result.latencies)
    result.note = "operator revocation by grant_id → SET taken by the receiver"
    return result


def fanout_row(url: str, issuer: TestIssuer, count: int) -> Result:
    worker, operator = identity_token(issuer), issuer.k8s_token(OPERATOR_NS, "admin", lifetime=3600)
    with receivers(url, issuer, 3) as servers, httpx.Client(base_url=url, timeout=120) as http:
        ids = [_grant(http, worker, f"fanout-{i}")["grant_id"] for i in range(count)]
        started = time.perf_counter()
        _revoke(http, operator, boundary=JWT_BOUNDARY)
        done = [seen.wait(lambda s=seen: len(s.order) >= count, 120) for _, seen in servers]
        took = max((max(seen.at.values()) for _, seen in servers if seen.at), default=started) - started
        first = servers[0][1].order  # every stream gets the same SETs in the same (chain) order, none twice
        exact = [sorted(seen.order) == sorted(ids) and seen.order == first for _, seen in servers]
    result = Result(f"{count:,} revocations → 3 receivers (push)", 3, requests=3 * count, elapsed=took,
                    rate_override=count / took if took > 0 else 0.0)  # fmt: skip
    result.errors = sum(count - len(set(seen.order)) for _, seen in servers)
    result.note = (f"all {3 * count:,} SETs in {took:.2f} s" if all(done) else "not all delivered in 120 s") + (
        "" if all(exact) else "; order or duplicates differ")
    result.met = all(done) and all(exact)
    return result


def rows(seconds: float, quick: bool) -> list[Result]:
    """Both rows against one broker: `quick` is 20 revocations and a fan-out of 100, else 200 and 1,000."""
    refusals, fanout = (20, 100) if quick else (200, 1000)
    with ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="broker-bench-signals-"))
        issuer = stack.enter_context(TestIssuer())
        broker = stack.enter_context(broker_server(Path(tmp) / "broker", config(issuer)))
        return [refusal_row(broker.url, issuer, refusals, max(seconds, 1.0) * 12), fanout_row(broker.url, issuer, fanout)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.signals", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="time cap of the refusal row is 12× this")
    parser.add_argument("--quick", action="store_true", help="20 revocations, a fan-out of 100")
    args = parser.parse_args(argv)
    for row in rows(args.seconds, args.quick):
        p50, p99 = row.percentile(0.5), row.percentile(0.99)
        timing = f"p50 {p50:.1f} ms  p99 {p99:.1f} ms" if p50 is not None else f"{row.rate:,.0f} revocations/s"
        print(f"{row.scenario}: {row.requests} ({row.errors} err)  {timing}  {row.note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
