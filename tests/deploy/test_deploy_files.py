"""The container image, the compose file, the Helm chart and the Vault plan: checked for what they promise.

Docker cannot run here, so the Dockerfile is parsed (and linted with hadolint); the chart is linted
and rendered with helm (installed by `make test`, see deploy/tools/install-helm.sh), with its options
off and on, and every object is checked against Kubernetes' own JSON schemas (kubernetes-validate,
which bundles them: kubeconform would download its schemas, and this machine has no network); every
config they carry is loaded through the broker's own settings and policy code.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
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


@pytest.mark.parametrize("which", ["defaults", "everything-on"])
def test_helm_lint_strict(which: str, tmp_path: Path) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(EVERYTHING_ON if which == "everything-on" else {}))
    done = subprocess.run([_helm(), "lint", "--strict", str(CHART), "-f", str(path)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
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
    pod = rendered["Deployment"]["spec"]["template"]["spec"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "vault-token"]
    token = next(v for v in pod["volumes"] if v["name"] == "vault-token")["projected"]["sources"][0]
    assert str(settings.vault.kubernetes_token_file) == f"{mount['mountPath']}/{token['serviceAccountToken']['path']}"


@pytest.mark.parametrize("which", ["defaults", "everything-on"])
def test_no_volume_is_mounted_inside_another(which, rendered, everything) -> None:
    """A mount inside a read-only volume needs a mount point the runtime cannot create there: each gets its own folder."""
    docs = rendered if which == "defaults" else everything
    for kind in ("Deployment", "Job"):
        (container,) = docs[kind]["spec"]["template"]["spec"]["containers"]
        paths = [PurePosixPath(m["mountPath"]) for m in container["volumeMounts"]]
        nested = [(str(a), str(b)) for a in paths for b in paths if a != b and a in b.parents]
        assert not nested and len(set(paths)) == len(paths), (kind, nested)


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


# --- the chart's optional objects and knobs (off by default, each rendered and checked when on) -------

EVERYTHING_ON: dict[str, Any] = {
    "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 5, "targetMemoryUtilizationPercentage": 80},
    "ingress": {
        "enabled": True, "className": "nginx", "annotations": {"nginx.ingress.kubernetes.io/ssl-redirect": "true"},
        "hosts": [{"host": "broker.acme.internal", "paths": [{"path": "/", "pathType": "Prefix"}]}],
        "tls": [{"secretName": "broker-tls", "hosts": ["broker.acme.internal"]}],
    },
    "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "kube-prometheus-stack"}},
    "networkPolicy": {
        "enabled": True,
        "ingressFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "payments"}}}],
        "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.10/32"}}], "ports": [{"port": 5432, "protocol": "TCP"}]}],
    },
    "extraEnv": [{"name": "BROKER_DEPLOYMENT_ID", "value": "prod-eu1"}],
    "extraVolumes": [{"name": "spire-bundle", "configMap": {"name": "spire-bundle"}}],
    "extraVolumeMounts": [{"name": "spire-bundle", "mountPath": "/run/spire/bundle", "readOnly": True}],
    "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "topology.kubernetes.io/zone",
         "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "broker"}}}]}},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "security", "effect": "NoSchedule"}],
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "priorityClassName": "system-cluster-critical",
    "podAnnotations": {"sidecar.istio.io/inject": "false"},
    "podLabels": {"team": "platform"},
}  # fmt: skip
# Kubernetes releases checked: the oldest whose schemas kubernetes-validate ships, and the newest
K8S_VERSIONS = ("1.25.0", "1.37.0")
CRDS = {"ServiceMonitor"}  # no upstream schema offline (checked field by field below)


def _render_with(tmp_path: Path, values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The chart rendered with a values file: {kind: object} (one object per kind in this chart)."""
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    done = subprocess.run([_helm(), "template", "rel", str(CHART), "-f", str(path)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return {doc["kind"]: doc for doc in yaml.safe_load_all(done.stdout) if doc}


@pytest.fixture(scope="module")
def everything(tmp_path_factory) -> dict[str, dict[str, Any]]:
    return _render_with(tmp_path_factory.mktemp("chart"), EVERYTHING_ON)


@pytest.mark.parametrize("which", ["defaults", "everything-on"])
def test_rendered_objects_pass_the_kubernetes_schemas(which, rendered, everything) -> None:
    """kubeconform's check (strict: unknown fields refused), from the schemas kubernetes-validate bundles."""
    import kubernetes_validate

    docs = rendered if which == "defaults" else everything
    for version in K8S_VERSIONS:
        for kind, doc in docs.items():
            if kind in CRDS:
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{kind} on Kubernetes {version}: {exc.message} at {list(exc.path)}")
    assert set(docs) - CRDS - {"Deployment"}, "validated more than one kind"


def test_the_schema_check_refuses_an_unknown_field(rendered) -> None:
    """The check above is not vacuous: a misspelt field is refused."""
    import kubernetes_validate

    broken = {**rendered["Deployment"], "spec": {**rendered["Deployment"]["spec"], "replica": 3}}
    with pytest.raises(kubernetes_validate.ValidationError, match="'replica' was unexpected"):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_optional_objects_are_off_by_default(rendered) -> None:
    assert not {"Ingress", "ServiceMonitor", "NetworkPolicy", "HorizontalPodAutoscaler"} & set(rendered)
    pod = rendered["Deployment"]["spec"]["template"]["spec"]
    assert "affinity" not in pod and "priorityClassName" not in pod and "tolerations" not in pod
    assert rendered["Deployment"]["spec"]["replicas"] == 3


def test_ingress_routes_every_host_to_the_service_http_port(everything) -> None:
    ingress, service = everything["Ingress"], everything["Service"]
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "nginx" and spec["tls"] == EVERYTHING_ON["ingress"]["tls"]
    assert ingress["metadata"]["annotations"] == EVERYTHING_ON["ingress"]["annotations"]
    (rule,) = spec["rules"]
    (path,) = rule["http"]["paths"]
    assert rule["host"] == "broker.acme.internal" and path["path"] == "/" and path["pathType"] == "Prefix"
    assert path["backend"]["service"] == {"name": service["metadata"]["name"], "port": {"name": "http"}}
    assert "http" in {port["name"] for port in service["spec"]["ports"]}


def test_service_monitor_scrapes_metrics_through_the_service(everything) -> None:
    monitor, service = everything["ServiceMonitor"], everything["Service"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"  # Prometheus's selector
    assert _selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["default"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint == {"port": "http", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}


def test_network_policy_admits_the_listed_peers_on_the_http_port_only(everything) -> None:
    policy, deployment = everything["NetworkPolicy"]["spec"], everything["Deployment"]
    assert _selects(policy["podSelector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"])
    assert not _selects(policy["podSelector"]["matchLabels"], everything["Job"]["spec"]["template"]["metadata"]["labels"])
    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    listed, own_test = rule["from"]
    assert listed == EVERYTHING_ON["networkPolicy"]["ingressFrom"][0]
    assert _selects(own_test["podSelector"]["matchLabels"], everything["Pod"]["metadata"]["labels"])  # helm test
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    dns, database = policy["egress"]
    assert {p["port"] for p in dns["ports"]} == {53} and "to" not in dns
    assert database == EVERYTHING_ON["networkPolicy"]["egress"][0]


def test_network_policy_without_egress_rules_leaves_egress_open(tmp_path) -> None:
    policy = _render_with(tmp_path, {"networkPolicy": {"enabled": True}})["NetworkPolicy"]["spec"]
    assert policy["policyTypes"] == ["Ingress"] and "egress" not in policy
    assert policy["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]  # any peer, that port only


def test_autoscaling_takes_over_replicas_and_the_pdb_follows_min_replicas(everything, tmp_path) -> None:
    hpa, deployment = everything["HorizontalPodAutoscaler"]["spec"], everything["Deployment"]
    assert "replicas" not in deployment["spec"]  # a fixed count would fight the HPA on every upgrade
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 5)
    targets = {m["resource"]["name"]: m["resource"]["target"]["averageUtilization"] for m in hpa["metrics"]}
    assert targets == {"cpu": 70, "memory": 80}
    assert everything["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    one = _render_with(tmp_path, {"autoscaling": {"enabled": True, "minReplicas": 1}, "replicaCount": 3})
    assert "PodDisruptionBudget" not in one and "HorizontalPodAutoscaler" in one


def test_extra_env_volumes_and_scheduling_reach_the_pods(everything) -> None:
    pod = everything["Deployment"]["spec"]["template"]
    spec, (container,) = pod["spec"], pod["spec"]["containers"]
    assert {"name": "BROKER_DEPLOYMENT_ID", "value": "prod-eu1"} in container["env"]
    assert container["env"][0]["name"] == "BROKER_CONFIG"  # the chart's own env stays
    (migrate,) = everything["Job"]["spec"]["template"]["spec"]["containers"]
    assert {"name": "BROKER_DEPLOYMENT_ID", "value": "prod-eu1"} in migrate["env"]
    assert EVERYTHING_ON["extraVolumes"][0] in spec["volumes"]
    assert EVERYTHING_ON["extraVolumeMounts"][0] in container["volumeMounts"]
    for key in ("affinity", "tolerations", "nodeSelector", "priorityClassName"):
        assert spec[key] == EVERYTHING_ON[key], key
    assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    assert "checksum/config" in pod["metadata"]["annotations"]
    assert pod["metadata"]["labels"]["team"] == "platform"
    assert _selects(everything["Service"]["spec"]["selector"], pod["metadata"]["labels"])


def test_kubernetes_attestor_gets_the_api_servers_ca_and_a_pod_token(rendered, tmp_path, monkeypatch) -> None:
    """In-cluster: the files the k8s attestor names are the projected API-audience token and kube-root-ca.crt."""
    pod = rendered["Deployment"]["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "kubernetes-api")["projected"]["sources"]
    token, bundle = volume[0]["serviceAccountToken"], volume[1]["configMap"]
    assert "audience" not in token and token["path"] == "token"  # the API server's own audience, not Vault's
    assert bundle == {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "kubernetes-api"]
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    data = rendered["ConfigMap"]["data"]
    (tmp_path / "broker.yaml").write_text(data["broker.yaml"])
    (tmp_path / "policy.yaml").write_text(data["policy.yaml"])
    (k8s,) = [a for a in load_settings(tmp_path / "broker.yaml").attestors if a.preset == "kubernetes"]
    assert str(k8s.jwks_token_file) == f"{mount['mountPath']}/token" and mount["readOnly"] is True
    assert str(k8s.jwks_ca_file) == f"{mount['mountPath']}/ca.crt"
    assert k8s.jwks_uri == "https://kubernetes.default.svc/openid/v1/jwks"
    vault = next(v for v in pod["volumes"] if v["name"] == "vault-token")["projected"]["sources"][0]
    assert vault["serviceAccountToken"]["audience"] == "vault"  # the two tokens never mix


def test_kubernetes_attestor_volume_is_left_out_when_disabled(tmp_path) -> None:
    pod = _render_with(tmp_path, {"kubernetesAttestor": {"enabled": False}})["Deployment"]["spec"]["template"]["spec"]
    assert "kubernetes-api" not in {v["name"] for v in pod["volumes"]}


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"autoscaling": {"targetCPUUtilizationPercentage": 150}}, "maximum"),
        ({"ingress": {"hosts": [{"host": "b", "paths": [{"path": "api"}]}]}}, "pattern"),
        ({"extraEnv": [{"value": "x"}]}, "missing property 'name'"),
        ({"serviceMonitor": {"interval": "often"}}, "pattern"),
        ({"networkPolicy": {"egres": []}}, "additional properties"),
    ],
    ids=["hpa-over-100", "relative-ingress-path", "env-without-name", "bad-scrape-interval", "misspelt-policy-key"],
)
def test_values_schema_refuses_bad_optional_values(values, complaint, tmp_path) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    done = subprocess.run([_helm(), "template", "rel", str(CHART), "-f", str(path)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode != 0 and complaint in done.stderr, done.stderr
