"""One answer to "does a missing tool fail this run?": in CI it fails, on a laptop it skips with the reason.

CI (`.ci/run`, any runner that sets `CI`) installs every tool and service the suite needs, so a
missing one there is a broken setup that must not pass as a skip. `CI` counts as set unless it is
empty, `0`, `false`, `no` or `off` (GitHub and GitLab set `true`, some runners `1`).
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

_UNSET = frozenset({"", "0", "false", "no", "off"})


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in _UNSET


def missing(what: str, reason: str) -> NoReturn:
    """`what` (a tool or service) is not there: fail in CI, skip elsewhere; `reason` says how to get it."""
    if in_ci():
        pytest.fail(f"{what} is required in CI: {reason}")
    pytest.skip(f"{what} is missing: {reason}")
