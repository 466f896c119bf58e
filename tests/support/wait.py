"""Waiting in tests, always on a condition and always bounded: never a sleep that hopes it was long enough."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
import uvicorn

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float = 60.0, what: str = "the condition",
               interval: float = 0.1) -> T:  # fmt: skip
    """The first truthy value of `condition()`, asked every `interval` s; fails the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what} did not come within {timeout:g} s"
        time.sleep(interval)
    return value


def wait_serving(url: str, proc: subprocess.Popen, path: str = "/readyz", timeout: float = 60.0,
                 log: Path | None = None) -> None:  # fmt: skip
    """Until the process serving `url` answers 200 on `path`; fails at once, with its output, if it exits."""

    def answers() -> bool:
        assert proc.poll() is None, f"the process for {url} exited with {proc.returncode}: {_output(proc, log)}"
        try:
            return httpx.get(url + path, timeout=2.0, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(answers, timeout, f"a 200 from {url}{path}", interval=0.2)


def wait_started(server: uvicorn.Server, thread: threading.Thread, timeout: float = 10.0) -> None:
    """Until uvicorn's `server`, run by `thread`, listens; fails at once if the thread ends first."""

    def started() -> bool:
        assert server.started or thread.is_alive(), "the server's thread ended before it listened"
        return server.started

    wait_until(started, timeout, "the server listening", interval=0.02)


def _output(proc: subprocess.Popen, log: Path | None) -> str:
    if log is not None:
        return log.read_text(errors="replace")[-2000:]
    out = proc.stdout.read() if proc.stdout else ""
    return (out.decode(errors="replace") if isinstance(out, bytes) else out)[-2000:]
