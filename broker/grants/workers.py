"""Background workers: the revocation outbox, the expiry reaper, policy reload and key refresh."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from broker.errors import BrokerError

log = logging.getLogger(__name__)


class Worker:
    """Runs each job every `interval` seconds in one daemon thread until stopped."""

    def __init__(self, jobs: dict[str, Callable[[], object]], interval: float) -> None:
        self._jobs = jobs
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="broker-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)

    def run_once(self) -> None:
        for name, job in self._jobs.items():
            try:
                job()
            except BrokerError as exc:
                # the ledger or Vault is down: the next pass retries; nothing is lost (outbox)
                log.warning("worker job %s failed: %s", name, exc.code)
            except Exception:
                log.exception("worker job %s crashed", name)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.run_once()
