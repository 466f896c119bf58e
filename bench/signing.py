"""The signing floor: how many PyJWT signs and verifies one core does per second, per algorithm."""

from __future__ import annotations

import time

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from bench.harness import Result

CLAIMS = {"iss": "http://bench", "sub": "system:serviceaccount:bench:worker", "aud": "bench", "scope": "read",
          "iat": 1_700_000_000, "exp": 4_000_000_000, "jti": "g_benchbenchbenchbench"}  # fmt: skip


def _per_second(work, seconds: float) -> tuple[float, list[float]]:
    """Run `work` back to back for `seconds` on this thread; (ops/s, each op's latency)."""
    latencies, started = [], time.perf_counter()
    deadline = started + seconds
    while (now := time.perf_counter()) < deadline:
        work()
        latencies.append(time.perf_counter() - now)
    return len(latencies) / (time.perf_counter() - started), latencies


def floor(seconds: float = 1.0) -> list[Result]:
    """ES256 and EdDSA sign and verify, one thread (the GIL makes that one core)."""
    rows = []
    for alg, private in (("ES256", ec.generate_private_key(ec.SECP256R1())),
                         ("EdDSA", ed25519.Ed25519PrivateKey.generate())):  # fmt: skip
        token = jwt.encode(CLAIMS, private, algorithm=alg)
        public = private.public_key()
        jobs = {
            "sign": lambda: jwt.encode(CLAIMS, private, algorithm=alg),  # noqa: B023 (used inside the loop)
            "verify": lambda: jwt.decode(token, public, algorithms=[alg], audience="bench"),  # noqa: B023
        }
        for name, work in jobs.items():
            rate, latencies = _per_second(work, seconds)
            rows.append(Result(f"PyJWT {alg} {name} (1 core)", 1, len(latencies), 0, seconds, latencies, rate))
    return rows
