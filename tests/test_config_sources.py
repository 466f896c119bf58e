"""Settings come from the YAML file, `BROKER_*` variables over it, and arguments over both; no field is left out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from broker.config import Settings, load_settings

YAML = {"env": "test", "max_body_bytes": 1000, "vault": {"addr": "http://vault.example:8200", "timeout": 3},
        "limits": {"issue_rate": 7}}  # fmt: skip


@pytest.fixture
def config(tmp_path, monkeypatch) -> Path:
    for name in [n for n in os.environ if n.startswith("BROKER_")]:
        monkeypatch.delenv(name)
    path = tmp_path / "broker.yaml"
    path.write_text(yaml.safe_dump(YAML))
    return path


def test_every_field_is_overridable_from_the_environment(config, monkeypatch):
    monkeypatch.setenv("BROKER_MAX_BODY_BYTES", "2000")  # not in the old hand-kept list
    monkeypatch.setenv("BROKER_WORKER_INTERVAL", "0.5")
    settings = load_settings(config)
    assert (settings.max_body_bytes, settings.worker_interval) == (2000, 0.5)


def test_a_section_from_the_environment_completes_the_files_section(config, monkeypatch):
    monkeypatch.setenv("BROKER_VAULT_TOKEN_FILE", "/run/vault-token")
    monkeypatch.setenv("BROKER_LIMITS_MAX_ACTIVE_GRANTS", "3")
    settings = load_settings(config)
    assert settings.vault.addr == "http://vault.example:8200" and settings.vault.timeout == 3
    assert settings.vault.token_file == Path("/run/vault-token")
    assert (settings.limits.issue_rate, settings.limits.max_active_grants) == (7, 3)


def test_a_field_whose_name_starts_like_another_stays_one_field(config, monkeypatch):
    monkeypatch.setenv("BROKER_POLICY_FILE", "/etc/broker/policy.yaml")
    settings = load_settings(config)
    assert settings.policy_file == Path("/etc/broker/policy.yaml") and settings.policy is None


def test_arguments_beat_the_environment_which_beats_the_file(config, monkeypatch):
    monkeypatch.setenv("BROKER_DATA_DIR", "/from/env")
    monkeypatch.setenv("BROKER_CONFIG", str(config))
    assert load_settings().data_dir == Path("/from/env") and load_settings().max_body_bytes == 1000
    assert load_settings(data_dir=Path("/from/cli")).data_dir == Path("/from/cli")
    assert Settings().config == config  # the class itself reads the same sources
