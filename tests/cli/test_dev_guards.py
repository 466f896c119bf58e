"""Dev identities never work in production, and dev mode keeps its secrets to its own user."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from broker.cli import app
from broker.config import DEV_ISSUER
from broker.dev import dev_config, ensure_dev_issuer
from broker.dev_openbao import free_port
from tests.support.wait import wait_serving

BROKER = str(Path(sys.executable).with_name("broker"))
REFUSED = "trusts the development identity issuer"


def _attestor(name: str, issuer: str, **where: str) -> dict:
    return {"name": name, "preset": "oidc", "issuer": issuer, "audiences": ["broker-dev"],
            "algorithms": ["ES256"], **where}  # fmt: skip


def _dev_attestors(data_dir: Path) -> dict[str, dict]:
    """Ways a config can trust the dev issuer: its issuer URL, or its key set under another name."""
    jwks = ensure_dev_issuer(data_dir)
    copied = data_dir / "copied-jwks.json"
    shutil.copy(jwks, copied)
    return {
        "dev-issuer-url": _attestor("dev", DEV_ISSUER, jwks_file=str(jwks)),
        "dev-jwks-file": _attestor("corp", "https://login.corp.example", jwks_file=str(jwks)),
        "dev-jwks-copied": _attestor("corp", "https://login.corp.example", jwks_file=str(copied)),
        "dev-jwks-uri": _attestor("corp", "https://login.corp.example",
                                  jwks_uri="https://dev-issuer.broker.invalid/jwks.json"),
    }  # fmt: skip


CASES = ["dev-issuer-url", "dev-jwks-file", "dev-jwks-copied", "dev-jwks-uri"]


@pytest.mark.parametrize("case", CASES)
def test_production_config_refuses_the_dev_issuer(tmp_path, case):
    config = tmp_path / "broker.yaml"  # no `env:`: production
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path), "attestors": [_dev_attestors(tmp_path)[case]]}))
    result = CliRunner().invoke(app, ["keys", "list", "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert str(config) in result.output and REFUSED in result.output


@pytest.mark.parametrize("env", ["development", "test"])
def test_dev_and_test_configs_may_trust_the_dev_issuer(tmp_path, env):
    config = tmp_path / "broker.yaml"
    attestor = _dev_attestors(tmp_path)["dev-issuer-url"]
    config.write_text(yaml.safe_dump({"env": env, "data_dir": str(tmp_path), "attestors": [attestor]}))
    result = CliRunner().invoke(app, ["keys", "list", "--config", str(config)])
    assert result.exit_code == 0, result.output


def test_production_config_with_the_demo_attestor_is_refused(tmp_path):
    """The issue's case: the demo config with `env` dropped (production) does not load."""
    demo = dev_config(tmp_path, 8080)
    del demo["env"], demo["dev_issuer"]
    config = tmp_path / "broker.yaml"
    config.write_text(yaml.safe_dump(demo))
    result = CliRunner().invoke(app, ["keys", "list", "--config", str(config)])
    assert result.exit_code == 2 and REFUSED in result.output


def _dev_token(data_dir: Path, subject: str = "dev:operator") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    return subprocess.run([BROKER, "dev-token", "--subject", subject, "--data-dir", str(data_dir)],
                          capture_output=True, text=True, env=env, check=False)  # fmt: skip


def test_dev_token_refuses_a_data_dir_that_is_not_a_dev_configs(tmp_path):
    ensure_dev_issuer(tmp_path)  # the dev issuer's key is there, as a production config pointing at it would have it
    refused = _dev_token(tmp_path)
    assert refused.returncode == 2 and refused.stdout == ""
    assert "not the data dir of a dev config" in refused.stderr


def test_dev_token_refuses_a_marker_copied_from_another_data_dir(tmp_path):
    dev_dir, other = tmp_path / "dev", tmp_path / "prod"
    dev_config(dev_dir, 8080)
    shutil.copytree(dev_dir, other)
    assert _dev_token(dev_dir).returncode == 0
    assert _dev_token(other).returncode == 2


def _command_lines() -> list[bytes]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            found.append((proc / "cmdline").read_bytes())
        except OSError:
            continue  # not a process, or it ended meanwhile
    return found


def test_dev_mode_keeps_its_data_dir_and_root_token_private(tmp_path):
    data_dir, home = tmp_path / ".broker", tmp_path / "home"
    data_dir.mkdir(mode=0o755)
    home.mkdir()
    data_dir.chmod(0o755)  # already there and open to everyone, as `mkdir -p "$DATA"` leaves it
    (data_dir / "openbao.log").write_text("an old log\n")
    (data_dir / "openbao.log").chmod(0o644)
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}, "HOME": str(home)}
    proc = subprocess.Popen(
        [BROKER, "dev", "--port", str(port), "--data-dir", str(data_dir), "--postgres-url",
         f"postgresql://postgres@127.0.0.1:{free_port()}/none"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        wait_serving(f"http://127.0.0.1:{port}", proc, "/healthz")
        token_file = data_dir / "openbao-root-token"
        root_token = token_file.read_text().strip().encode()
        assert len(root_token) > 20
        modes = {p.name: oct(p.stat().st_mode & 0o777) for p in (data_dir, token_file, data_dir / "openbao.log")}
        assert modes == {".broker": "0o700", "openbao-root-token": "0o600", "openbao.log": "0o600"}
        assert json.loads((data_dir / "dev-mode.json").read_text())["env"] == "development"
        assert not [line for line in _command_lines() if root_token in line], "root token in a process's argv"
        assert not (home / ".vault-token").exists()
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=30)
    assert b"openbao:" in output and root_token not in output
