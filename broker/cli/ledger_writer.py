"""`broker serve`'s ledger writer process: started before the workers, stopped after them.

The process (broker/ledger/writer_process.py, `broker.app.serve_ledger_writer`) reads the same settings
as the workers (BROKER_CONFIG and the environment). If it ends while the broker serves, the workers'
writes fail closed (503) and `broker serve` stops itself (exit 1) so that its supervisor restarts
it whole, rather than serving without a ledger. It also ends by itself when `broker serve` is gone.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from pathlib import Path

from broker.errors import LedgerUnavailable
from broker.ledger.writer_process import wait_for_writer

log = logging.getLogger("broker.serve")
START_TIMEOUT = 30.0


class LedgerWriterProcess:
    def __init__(self, process: multiprocessing.process.BaseProcess) -> None:
        self._process = process
        self._stopping = False
        threading.Thread(target=self._watch, name="broker-ledger-writer-watch", daemon=True).start()

    @classmethod
    def start(cls, data_dir: Path) -> LedgerWriterProcess:
        process = multiprocessing.get_context("spawn").Process(target=_main, args=(os.getpid(),),
                                                               name="broker-ledger-writer", daemon=False)  # fmt: skip
        process.start()
        try:
            wait_for_writer(data_dir, alive=process.is_alive, timeout=START_TIMEOUT)
        except LedgerUnavailable as exc:
            process.kill()
            process.join()
            raise LedgerUnavailable(f"the ledger writer process did not start: {exc.detail}") from None
        log.info("ledger writer process %d serving the workers' writes", process.pid)
        return cls(process)

    def stop(self) -> bool:
        """End the process (after the workers: their last writes are answered). False if it had died before."""
        self._stopping = True
        survived = self._process.is_alive()
        self._process.terminate()
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        return survived

    def _watch(self) -> None:
        multiprocessing.connection.wait([self._process.sentinel])  # its end, without reaping it (stop does)
        if not self._stopping:
            log.error("the ledger writer process ended (exit %s): stopping the broker", self._process.exitcode)
            os.kill(os.getpid(), signal.SIGTERM)  # uvicorn stops its workers; serve then exits 1


def _main(parent: int) -> None:
    from broker.app import serve_ledger_writer
    from broker.config import load_settings

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C: serve stops the workers first, then this
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    serve_ledger_writer(load_settings())


def _exit_with(parent: int) -> None:
    """`broker serve` killed outright (no stop): nobody is left to write for."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)
