"""Readiness from checks run in the background: `/readyz` reads their last results, never waits for one.

Each check runs on its own daemon thread every `INTERVAL` seconds, so one that hangs (a paused
Vault, a locked SQLite file) delays no other check and no request. A check still running `STALE`
seconds after it began counts as failed (`timeout`), so a hang shows while it lasts.

Ready means "can serve": the ledger takes a write and a signing key is active. A backend whose
check fails does not make the broker unready; it degrades only the boundaries it serves (their
grants get 503 `backend_unavailable` from the backend itself), so jwt grants, completion and
introspection keep being routed here while Vault is down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from broker.errors import BrokerError

log = logging.getLogger(__name__)
INTERVAL = 2.0  # seconds between two runs of one check
STALE = 5.0  # a check running this long is reported as `timeout`
CRITICAL = ("ledger", "keys")  # what readiness is made of; every other check is a backend's


@dataclass(frozen=True)
class Result:
    """One run of one check: `code` is "ok" or the failure's stable code; `reason` is log-safe text."""

    code: str
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.code == "ok"


PENDING = Result("starting", "the first check has not finished")


class Readiness:
    """The checks' threads and the snapshot they keep; `boundaries` maps a check to the boundaries it serves."""

    def __init__(
        self,
        checks: Mapping[str, Callable[[], object]],
        boundaries: Mapping[str, Iterable[str]],
        *,
        every_boundary: Iterable[str] = (),
        interval: float = INTERVAL,
        stale: float = STALE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._checks = dict(checks)
        self._boundaries = {name: tuple(sorted(b)) for name, b in boundaries.items()}
        self._every_boundary = sorted({*every_boundary, *(b for bs in self._boundaries.values() for b in bs)})
        self._interval, self._stale, self._clock = interval, stale, clock
        self._results: dict[str, Result] = {name: PENDING for name in self._checks}
        self._running_since: dict[str, float | None] = {name: None for name in self._checks}
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for name in self._checks:
            thread = threading.Thread(target=self._loop, args=(name,), name=f"broker-ready-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=0.5)  # a check hung on a dead backend must not hold up shutdown

    def wait_for(self, predicate: Callable[[Readiness], bool], timeout: float) -> bool:
        """Block until `predicate(self)` holds (re-tested after each check result), or the timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout)

    def results(self) -> dict[str, Result]:
        """Each check's latest result; one running past `stale` seconds is `timeout`."""
        now, results = self._clock(), dict(self._results)
        for name, since in self._running_since.items():
            if since is not None and now - since > self._stale:
                results[name] = Result("timeout", f"check running for {now - since:.0f}s")
        return results

    def ready(self) -> bool:
        results = self.results()
        return all(results[name].ok for name in CRITICAL if name in results)

    def boundary_names(self) -> list[str]:
        """Every configured boundary (those of backends without a check are never degraded)."""
        return self._every_boundary

    def degraded(self) -> list[str]:
        """The boundaries whose backend failed its last check."""
        results = self.results()
        return sorted({b for name, bs in self._boundaries.items() if not results[name].ok for b in bs})

    def snapshot(self) -> dict[str, Any]:
        """The `/readyz` body (without the policy detail the API adds)."""
        results = self.results()
        body: dict[str, Any] = {
            "status": "ready" if self.ready() else "not_ready",
            "checks": {name: r.code for name, r in results.items() if name in CRITICAL},
            "backends": {name: r.code for name, r in results.items() if name not in CRITICAL},
            "degraded": self.degraded(),
        }
        # the ledger's and keys' reasons are fixed texts ("disk full"); a backend's stay in the log
        reasons = {name: r.reason for name, r in results.items() if name in CRITICAL and r.reason and not r.ok}
        if reasons:
            body["reasons"] = reasons
        return body

    def run_all_once(self) -> None:
        """Every check once, in this thread (tests, and the pass before serving)."""
        for name in self._checks:
            self._run(name)

    def _loop(self, name: str) -> None:
        while not self._stop.is_set():
            self._run(name)
            self._stop.wait(self._interval)

    def _run(self, name: str) -> None:
        self._running_since[name] = self._clock()
        result = _outcome(self._checks[name])
        previous = self._results[name]
        with self._changed:
            self._results[name], self._running_since[name] = result, None
            self._changed.notify_all()
        if result.code != previous.code and not (previous is PENDING and result.ok):  # changes only, not every run
            level = logging.INFO if result.ok else logging.WARNING
            log.log(level, "readiness check %s: %s%s", name, result.code, f" ({result.reason})" if result.reason else "")


def _outcome(check: Callable[[], object]) -> Result:
    try:
        check()
    except BrokerError as exc:  # its detail is built to be log-safe (e.g. the ledger's `why_failed`)
        return Result(exc.code, exc.detail[:200] or None)
    except Exception as exc:  # noqa: BLE001 (readiness reports, it never raises)
        return Result("failed", type(exc).__name__)
    return Result("ok")


def readiness_of(checks: Mapping[str, Callable[[], object]], boundaries: Iterable[Any], **options: Any) -> Readiness:
    """Readiness over the service's checks; a check named after a backend kind serves that kind's boundaries."""
    served = {name: [b.name for b in boundaries if b.backend == name] for name in checks if name not in CRITICAL}
    return Readiness(checks, served, every_boundary=[b.name for b in boundaries], **options)
