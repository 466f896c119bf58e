"""docs/operator-guide.md runs: its `bash` blocks, in order, against a live `broker dev` (with OpenBao)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from broker.dev_openbao import free_port
from tests.support.wait import wait_until

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "operator-guide.md"


def guide_script() -> str:
    blocks = re.findall(r"```bash\n(.*?)```", GUIDE.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 10
    return "\n".join(blocks)


@pytest.mark.slow  # starts `broker dev` with OpenBao and runs about twenty `broker` processes
def test_every_command_of_the_operator_guide_runs(tmp_path):
    data, port = tmp_path / "incident", free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "WITNESS_PORT": str(_another_free_port(port)),  # PORT + 1 may be some connection's source port
        "DATA": str(data),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "BROKER_ENV": "development",
        "COLUMNS": "160",
        "EXAMPLES": str(GUIDE.parents[1] / "examples" / "policies"),
    }
    env.pop("BROKER_IDENTITY_TOKEN", None)
    try:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", guide_script()],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
    except subprocess.TimeoutExpired as hung:
        pytest.fail(f"the guide hung; stdout:\n{hung.stdout}\nstderr:\n{hung.stderr}\n{_stacks(data)}")
    finally:
        _stop_leftover(data / "dev.pid")
        _stop_leftover(data / "witness.pid")
    out = done.stdout
    assert done.returncode == 0, f"stdout:\n{out}\nstderr:\n{done.stderr}\nlog:\n{_log(data)}"
    assert "leaked token lookup: 403" in out
    assert '"code":"subject_frozen"' in out
    assert out.count('"ok": true') >= 3  # the export file, the live chain, the offline chain
    assert "unfrozen: subject dev:demo-workload" in out
    assert '"witnesses": ["broker-witness"]' in out  # the backup verified against the witness's checkpoint
    assert "4 grants" in out  # the blast radius: three jwt grants and one vault token
    # changing policy safely: the shipped policy passes its cases, the next revision fails two
    assert "7 passed, 0 failed" in out and "5 passed, 2 failed" in out and "policy test exit 1" in out
    assert "rule reporting: removed" in out and "policy diff exit 1" in out
    assert "decision: allow by rule payments-workers (max_ttl 600s)" in out


def _another_free_port(taken: int) -> int:
    while (port := free_port()) == taken:
        pass
    return port


def _stop_leftover(pid_file: Path) -> None:
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
        except (ProcessLookupError, ValueError):
            pass


def _stacks(data: Path) -> str:
    """A `broker dev` that did not stop: every thread's stack (SIGUSR1), from its log."""
    pid_file, log = data / "dev.pid", data / "dev.log"
    try:
        os.kill(int(pid_file.read_text()), signal.SIGUSR1)
    except (OSError, ValueError):
        return f"log:\n{_log(data)}"
    with contextlib.suppress(AssertionError):  # no dump in time: the log as it is says more than a second failure
        wait_until(lambda: "most recent call first" in log.read_text(), 10, "a stack dump")
    return f"stacks of broker dev:\n{log.read_text()[-20000:]}\n{_tails(data / 'witness.log')}"


def _log(data: Path) -> str:
    return _tails(data / "dev.log", data / "witness.log")


def _tails(*logs: Path) -> str:
    return "\n".join(f"{log.name}:\n{log.read_text()[-3000:]}" for log in logs if log.exists())
