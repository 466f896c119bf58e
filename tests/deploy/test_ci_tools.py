"""A missing tool fails CI instead of skipping: one predicate for every test, and the CI scripts stop on it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import openbao
from tests.support.ci import in_ci, missing

ROOT = Path(__file__).resolve().parents[2]
SET = ["true", "TRUE", "1", "yes"]
UNSET = ["", "0", "false", "no", "off"]


@pytest.mark.parametrize("value", SET)
def test_ci_set_makes_a_missing_tool_fail(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    assert in_ci()
    with pytest.raises(pytest.fail.Exception, match="helm is required in CI"):
        missing("helm", "make test installs it")
    with pytest.raises(pytest.fail.Exception, match="PostgreSQL"):  # the Vault tests ask the same question
        openbao.pg_unavailable("could not connect")


@pytest.mark.parametrize("value", UNSET)
def test_ci_unset_or_false_makes_a_missing_tool_skip(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    assert not in_ci()
    with pytest.raises(pytest.skip.Exception, match="docker-compose is missing"):
        missing("docker-compose", ".ci/run installs it")
    with pytest.raises(pytest.skip.Exception, match="PostgreSQL"):
        openbao.pg_unavailable("could not connect")


def _path_with(tmp_path: Path, *tools: str) -> str:
    """A PATH holding only `bash` and the named tools (each a stub that succeeds)."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    (folder / "bash").symlink_to(shutil.which("bash") or "/bin/bash")
    for tool in tools:
        (folder / tool).write_text("#!/bin/sh\nexit 0\n")
        (folder / tool).chmod(0o755)
    return str(folder)


@pytest.mark.parametrize(
    ("tools", "helm", "gone"),
    [((), False, "docker-compose helm"), (("docker-compose",), False, "helm"), (("helm",), False, "docker-compose")],
    ids=["both", "helm", "docker-compose"],
)
def test_ci_check_fails_naming_each_missing_tool(tmp_path, tools, helm, gone):
    env = {"PATH": _path_with(tmp_path, *tools), "VENV": str(tmp_path / "venv")}
    done = subprocess.run(["/bin/bash", str(ROOT / ".ci" / "check-tools")], env=env, capture_output=True, text=True)
    assert done.returncode == 1 and f"required tools missing: {gone} " in done.stderr


def test_ci_check_passes_with_helm_in_the_venv_and_docker_compose_on_path(tmp_path):
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "helm").write_text("#!/bin/sh\n")
    (venv_bin / "helm").chmod(0o755)
    env = {"PATH": _path_with(tmp_path, "docker-compose"), "VENV": str(tmp_path / "venv")}
    done = subprocess.run(["/bin/bash", str(ROOT / ".ci" / "check-tools")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_ci_run_checks_the_tools_and_sets_ci_before_the_tests():
    script = (ROOT / ".ci" / "run").read_text()
    assert script.index("export CI=true") < script.index("make tools") < script.index("check-tools")
    assert script.index("check-tools") < script.index("make test")


def test_make_test_stops_when_helm_cannot_be_installed(tmp_path):
    """No npm, no helm: `make test` fails before the suite runs, instead of running it without helm."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / ".installed").touch()  # the venv counts as installed: only the helm step and the suite are left
    ran = tmp_path / "suite-ran"
    (venv / "bin" / "python").write_text(f"#!/bin/sh\n: > {ran}\n")  # stands in for pytest (builtins only)
    (venv / "bin" / "python").chmod(0o755)
    env = {"PATH": _path_with(tmp_path), "HOME": str(tmp_path)}
    make = shutil.which("make") or "/usr/bin/make"
    done = subprocess.run([make, "-C", str(ROOT), "test", f"VENV={venv}"], env=env, capture_output=True, text=True)
    assert done.returncode != 0, done.stdout
    assert "npm not found" in done.stderr and not ran.exists()
    assert not (venv / "bin" / "helm").exists()
