"""The container image, the compose file, the Helm chart and the Vault plan: checked for what they promise.

Docker cannot run here, so the Dockerfile is parsed (and linted with hadolint); the chart is linted
and rendered with helm (installed by `make test`, see deploy/tools/install-helm.sh); every config
they carry is loaded through the broker's own settings and policy code.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from broker.cli import app as cli
from broker.config import load_settings
from broker.policy.model import compile_policy
from tests.support.ci import missing

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "broker"
SECRETS = {"BROKER_DATABASE_URL": "postgresql+psycopg://u:p@db/broker", "BROKER_KEY_ENCRYPTION_KEY": "x" * 44}


# --- Dockerfile --------------------------------------------------------------------------------


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined.splitlines() if line.strip()]


def _final_stage() -> list[tuple[str, str]]:
    steps = _instructions((ROOT / "Dockerfile").read_text())
    starts = [i for i, (op, _) in enumerate(steps) if op == "FROM"]
    assert len(starts) >= 2, "multi-stage: a build stage and a runtime stage"
    return steps[starts[-1]:]


def test_dockerfile_final_stage_is_small_non_root_and_healthchecked() -> None:
    final = _final_stage()
    ops = {op for op, _ in final}
    user = [args for op, args in final if op == "USER"][-1]
    assert user.split(":")[0] not in ("0", "root") and user.split(":")[0].isdigit()
    assert "HEALTHCHECK" in ops and "/healthz" in next(a for op, a in final if op == "HEALTHCHECK")
    assert any(op == "COPY" and "--from=build" in args for op, args in final)
    runs = " ".join(args for op, args in final if op == "RUN")
    assert not re.search(r"apt-get install|apk add|gcc|build-essential|pip install", runs)
    assert "site-packages/pip" in runs  # pip itself is removed from the runtime image
    cmd = next(a for op, a in final if op == "CMD")
    assert "--config" in cmd and "/etc/broker/broker.yaml" in cmd  # a mounted config file, plus BROKER_* env


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    done = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerignore_sends_only_the_package() -> None:
    lines = (ROOT / ".dockerignore").read_text().split()
    assert lines[lines.index("*")] == "*" and "!broker/" in lines and "!pyproject.toml" in lines


# --- docker-compose ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_runs_two_brokers_beside_postgres_openbao_and_a_workload(compose) -> None:
    services = compose["services"]
    assert {"broker-1", "broker-2", "postgres", "openbao", "demo-workload", "migrate"} <= set(services)
    for name in ("broker-1", "broker-2"):
        broker = services[name]
        assert broker["read_only"] and broker["cap_drop"] == ["ALL"]
        assert broker["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert ":?" in broker["environment"]["BROKER_KEY_ENCRYPTION_KEY"]  # refuses to start without a KEK
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["broker-1"]["image"] == services["broker-2"]["image"]


def test_compose_mounts_only_files_that_exist(compose) -> None:
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), source


def test_compose_config_validates_with_docker_compose_when_installed() -> None:
    tool = shutil.which("docker-compose")
    if tool is None:
        missing("docker-compose", ".ci/run installs Debian's docker-compose")
    env = {**os.environ, "POSTGRES_PASSWORD": "x", "BROKER_KEY_ENCRYPTION_KEY": "x"}
    done = subprocess.run([tool, "-f", str(DEPLOY / "docker-compose.yml"), "config", "-q"], capture_output=True,
                          text=True, env=env, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr


# --- configs and the Vault plan ----------------------------------------------------------------


def _helm_config(tmp_path: Path) -> Path:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(values["policy"]))
    path = tmp_path / "broker.yaml"
    path.write_text(yaml.safe_dump(values["config"]))
    return path


@pytest.mark.parametrize("which", ["compose", "helm"])
def test_shipped_configs_load_and_their_policy_compiles(which: str, tmp_path: Path, monkeypatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    path = DEPLOY / "compose" / "broker.yaml" if which == "compose" else _helm_config(tmp_path)
    settings = load_settings(path)
    assert settings.env == "production" and settings.key_repository == "database"
    policy = compile_policy(
        yaml.safe_load(settings.policy_file.read_text()), source=str(settings.policy_file),
        boundaries=settings.boundaries, attestors={a.name for a in settings.attestors},
    )  # fmt: skip
    assert policy.rules and not policy.warnings


@pytest.mark.parametrize("which", ["compose", "helm"])
def test_vault_plan_file_is_what_broker_vault_plan_generates(which: str, tmp_path: Path) -> None:
    path = DEPLOY / "compose" / "broker.yaml" if which == "compose" else _helm_config(tmp_path)
    result = CliRunner().invoke(cli, ["vault", "plan", "--config", str(path)])
    assert result.exit_code == 0, result.output
    lines = (DEPLOY / "vault" / "plan.yaml").read_text().splitlines(True)
    committed = "".join(line for line in lines if not line.startswith("#"))
    assert result.output == committed, "regenerate: broker vault plan --config deploy/compose/broker.yaml"


# --- Helm chart --------------------------------------------------------------------------------


def _helm() -> str:
    found = shutil.which("helm") or str(Path(sys.executable).with_name("helm"))
    if not Path(found).exists():
        missing("helm", "`make test` installs it (deploy/tools/install-helm.sh)")
    return found


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict[str, Any]]:
    done = subprocess.run([_helm(), "template", "rel", str(CHART)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return {doc["kind"]: doc for doc in yaml.safe_load_all(done.stdout) if doc}


def test_helm_lint_strict() -> None:
    done = subprocess.run([_helm(), "lint", "--strict", str(CHART)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_chart_renders_every_required_object(rendered) -> None:
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "ServiceAccount", "Job"} <= set(rendered)
    for doc in rendered.values():
        assert doc["apiVersion"] and doc["metadata"]["name"].startswith("rel-broker")


def test_deployment_projects_a_vault_audience_token_and_runs_locked_down(rendered) -> None:
    pod = rendered["Deployment"]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["securityContext"]["runAsNonRoot"] is True
    projected = next(v["projected"] for v in pod["volumes"] if "projected" in v)
    token = projected["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "vault" and token["expirationSeconds"] <= 3600
    container = pod["containers"][0]
    ctx = container["securityContext"]
    assert ctx["readOnlyRootFilesystem"] and not ctx["allowPrivilegeEscalation"]
    assert ctx["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert all("value" not in e or "postgres" not in e["value"] for e in container["env"])  # secrets by reference


def test_configmap_carries_a_loadable_config_and_policy(rendered, tmp_path: Path, monkeypatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    data = rendered["ConfigMap"]["data"]
    (tmp_path / "broker.yaml").write_text(data["broker.yaml"])
    (tmp_path / "policy.yaml").write_text(data["policy.yaml"])
    settings = load_settings(tmp_path / "broker.yaml")
    assert settings.vault.auth_method == "kubernetes"
    assert str(settings.vault.kubernetes_token_file).endswith("vault-token")


def _render(*sets: str) -> list[dict[str, Any]]:
    args = [a for pair in (("--set", v) for v in sets) for a in pair]
    done = subprocess.run([_helm(), "template", "rel", str(CHART), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def test_pdb_keeps_replicas_through_node_drains(rendered) -> None:
    pdb, deployment = rendered["PodDisruptionBudget"], rendered["Deployment"]
    assert pdb["spec"]["maxUnavailable"] == 1 and deployment["spec"]["replicas"] == 3
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_pdb_follows_replica_count() -> None:
    """One replica: no PDB (a `minAvailable: 2` there would block every node drain)."""
    kinds = [doc["kind"] for doc in _render("replicaCount=1")]
    assert "PodDisruptionBudget" not in kinds and "Deployment" in kinds


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_only_serving_pods_are_selected(rendered) -> None:
    selector = rendered["Service"]["spec"]["selector"]
    assert selector == rendered["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]
    assert _selects(selector, rendered["Deployment"]["spec"]["template"]["metadata"]["labels"])
    assert not _selects(selector, rendered["Job"]["spec"]["template"]["metadata"]["labels"])  # the migration
    assert not _selects(selector, rendered["Pod"]["metadata"]["labels"])  # the helm test


def test_helm_test_hook_calls_readyz_through_the_service(rendered) -> None:
    pod = rendered["Pod"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["args"][0]
    assert f"http://{rendered['Service']['metadata']['name']}:8080/readyz" in script
    assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize(
    ("value", "complaint"),
    [("replicaCount=0", "minimum"), ("replicaCont=2", "additional properties"), ("logFormat=xml", "must be one of")],
    ids=["zero-replicas", "misspelt-key", "unknown-log-format"],
)
def test_values_schema_refuses_bad_values(value: str, complaint: str) -> None:
    done = subprocess.run([_helm(), "template", "rel", str(CHART), "--set", value], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode != 0 and complaint in done.stderr, done.stderr
