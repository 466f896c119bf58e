"""CLI conventions (issue 12): versions, exit codes, usage errors, offline commands that never write, config checks."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from broker.cli import app
from broker.ledger import migrate


def run(*args: str, **env: str):  # noqa: ANN201
    return CliRunner().invoke(app, list(args), env={"BROKER_IDENTITY_TOKEN": "", **env})


def test_version_flag_and_command():
    assert run("--version").output.startswith("broker ")
    shown = json.loads(run("version", "-o", "json").output)
    assert shown["schema"] == migrate.head() and shown["broker"] and shown["policy"] is None


def test_help_lists_the_exit_codes():
    assert "3 broker unreachable, 4 not authorised, 5 tampered" in " ".join(run("--help").output.split())


def test_an_invalid_value_is_a_usage_error():
    result = run("grants", "ls", "--status", "bogus")
    assert result.exit_code == 2 and "bogus" in result.output


def test_a_missing_token_file_is_a_clear_message(tmp_path):
    result = run("grants", "ls", "--token-file", str(tmp_path / "nope"))
    assert result.exit_code == 2 and "--token-file" in result.output and "No such file" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_an_unreachable_broker_exits_3(tmp_path):
    token = tmp_path / "token"
    token.write_text("x")
    result = run("freezes", "--url", "http://127.0.0.1:1", "--token-file", str(token))
    assert result.exit_code == 3 and "cannot reach the broker" in result.output


@pytest.mark.parametrize("command", [["audit", "verify"], ["audit", "export"], ["report", "blast-radius"]])
def test_offline_readers_never_create_a_ledger(tmp_path, command):
    missing = tmp_path / "nonexistent"
    result = run(*command, "--data-dir", str(missing))
    assert result.exit_code == 2 and "no broker ledger" in result.output
    assert not missing.exists()


def test_unknown_broker_variables_are_refused_in_production(tmp_path):
    config = tmp_path / "broker.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path)}))
    result = run("keys", "list", "--config", str(config), BROKER_DATABSE_URL="postgresql://x")
    assert result.exit_code == 2 and "BROKER_DATABSE_URL (did you mean BROKER_DATABASE_URL?)" in result.output
    config.write_text(yaml.safe_dump({"env": "development", "data_dir": str(tmp_path)}))
    assert run("keys", "list", "--config", str(config), BROKER_DATABSE_URL="x").exit_code == 0


def _config_with_policy(tmp_path, policy: str):  # noqa: ANN202
    (tmp_path / "policy.yaml").write_text(policy)
    config = tmp_path / "broker.yaml"
    config.write_text(yaml.safe_dump({"env": "test", "data_dir": str(tmp_path), "policy_file": "policy.yaml",
                                      "boundaries": [{"name": "db", "backend": "jwt", "scopes": ["read"]}]}))  # fmt: skip
    return config


def test_vault_plan_and_config_validate_fail_on_a_broken_policy(tmp_path):
    config = _config_with_policy(tmp_path, "rules:\n  - name: r\n    match: {subject: a}\n    allow: [{boundary: nope}]\n")
    for command in (["vault", "plan"], ["config", "validate"]):
        result = run(*command, "--config", str(config))
        assert result.exit_code == 2 and "policy.yaml" in result.output, (command, result.output)


def test_config_validate_reports_every_error(tmp_path):
    config = tmp_path / "broker.yaml"
    config.write_text("env: test\nmax_body_bytes: -1\nworker_interval: 0\ncolour: red\n")
    result = run("config", "validate", "--config", str(config))
    assert result.exit_code == 2
    assert all(field in result.output for field in ("max_body_bytes", "worker_interval", "colour"))
    good = _config_with_policy(tmp_path, "rules:\n  - name: r\n    match: {subject: a}\n    allow: [{boundary: db, scopes: [read]}]\n")
    assert run("config", "validate", "--config", str(good)).output.startswith("ok: ")


JWT_BOUNDARY = {"name": "db", "backend": "jwt", "scopes": ["read"]}
ALLOW = {"rules": [{"name": "r", "match": {"subject": "a"}, "allow": [{"boundary": "db", "scopes": ["read"]}]}]}


def _serve_config(tmp_path, **fields):  # noqa: ANN202
    config = tmp_path / "broker.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "boundaries": [JWT_BOUNDARY],
                                      "policy": ALLOW, **fields}))  # fmt: skip
    return config


def test_serve_refuses_production_without_a_database_url(tmp_path):
    """The default env is production: an embedded SQLite ledger there would be one pod's private evidence."""
    config = _serve_config(tmp_path)
    result = run("serve", "--config", str(config))
    assert result.exit_code == 2 and "env is production but no database_url is set" in result.output
    assert not (tmp_path / "data").exists()
    validated = run("config", "validate", "--config", str(config))
    assert validated.exit_code == 2 and "no database_url" in validated.output
    # the Helm chart and compose file pass it from a Secret: then the config is fine
    with_url = run("config", "validate", "--config", str(config), BROKER_DATABASE_URL="postgresql+psycopg://u@db/b")
    assert with_url.exit_code == 0, with_url.output


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"policy": {"rules": [{"name": "r", "match": {"subject": "a"}, "allow": [{"boundary": "nope", "scopes": ["read"]}]}]}}, "nope"),
        ({"signing_keys": "database"}, "key_encryption_key"),
        ({"attestors": [{"name": "k8s", "preset": "kubernetes", "issuer": "https://kubernetes.default.svc",
                         "audiences": ["broker"], "jwks_uri": "https://kubernetes.default.svc/openid/v1/jwks",
                         "jwks_ca_file": "missing-ca.crt"}]}, "jwks_ca_file"),
    ],
    ids=["broken-policy", "no-kek", "missing-ca-bundle"],
)
def test_a_failed_start_leaves_no_ledger_or_keys_behind(tmp_path, fields, complaint):
    result = run("serve", "--config", str(_serve_config(tmp_path, env="development", **fields)), "--workers", "2")
    assert result.exit_code == 2 and complaint in result.output, result.output
    assert not (tmp_path / "data").exists()  # checked before the ledger was created or a key was made


def test_a_start_that_fails_after_writing_removes_what_it_wrote(tmp_path):
    """A file where the keys folder goes: the ledger was already created, and is removed again; the file stays."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keys").write_text("not a folder")
    result = run("serve", "--config", str(_serve_config(tmp_path, env="development")))
    assert result.exit_code == 1 and "keys: File exists" in result.output and result.exception is not None
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["keys"]
    assert (tmp_path / "data" / "keys").read_text() == "not a folder"


def test_keys_list_reads_only_and_prints_json_or_a_table(tmp_path):
    config = tmp_path / "broker.yaml"
    config.write_text(yaml.safe_dump({"env": "development", "data_dir": str(tmp_path / "data")}))
    empty = run("keys", "list", "--config", str(config), "-o", "json")
    assert empty.exit_code == 0 and json.loads(empty.output) == {"items": []}
    assert not (tmp_path / "data").exists()  # listing made no key, no folder
    rotated = run("keys", "rotate", "--config", str(config)).output.split()[2]  # "active key: KID (ES256)"
    items = json.loads(run("keys", "list", "--config", str(config), "-o", "json").output)["items"]
    assert [k["state"] for k in items] == ["active", "retired"] and items[0]["kid"] == rotated
    assert items[0]["retired_at"] is None and items[1]["retired_at"]
    shown = run("keys", "list", "--config", str(config), COLUMNS="30")
    assert "2 signing keys" in shown.output
    assert all(any(k["kid"] in line for line in shown.output.splitlines()) for k in items)  # whole, on one line


def test_keys_list_of_database_keys_needs_an_existing_ledger(tmp_path):
    config = tmp_path / "broker.yaml"
    config.write_text(yaml.safe_dump({"env": "development", "data_dir": str(tmp_path / "data"),
                                      "signing_keys": "database", "key_encryption_key": "ab" * 32}))  # fmt: skip
    result = run("keys", "list", "--config", str(config))
    assert result.exit_code == 2 and "no broker ledger" in result.output
    assert not (tmp_path / "data").exists()
