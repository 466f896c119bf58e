"""SIGTERM → SystemExit, so `with`/`async with` task blocks and `finally` clauses complete their grants."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

log = logging.getLogger(__name__)
_exiting = False


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    global _exiting
    if _exiting:  # already unwinding: a second SIGTERM must not interrupt the completion in progress
        log.warning("SIGTERM again while completing grants; still completing")
        return
    _exiting = True
    raise SystemExit(128 + signum)


def install_sigterm_exit() -> bool:
    """Install the handler in the main thread unless the program chose its own; True when installed."""
    if threading.current_thread() is not threading.main_thread():
        return False
    current = signal.getsignal(signal.SIGTERM)
    if current is _exit_on_sigterm:
        return True
    if current not in (signal.SIG_DFL, None):
        return False
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    return True
