"""Deployment artefacts are valid and agree with the code: Helm chart, Compose file,
Prometheus rules, Grafana dashboard, Dockerfile.

Tools come from `make tools` (scripts/install-test-tools.sh): promtool (Debian's
prometheus package), helm-render (Helm's template engine: Go text/template + sprig,
built from tools/helm-render) and the Compose JSON Schema (from the docker-compose wheel).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from streamproc.config import Settings
from streamproc.ops.metrics import Metrics

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS = REPO_ROOT / ".tools"
CHART = REPO_ROOT / "helm" / "streamproc"
RULES = REPO_ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "dashboards" / "streamproc.json"
COMPOSE = REPO_ROOT / "docker-compose.yml"
K8S_VERSION = "1.30.0"
CRD_API = "monitoring.coreos.com/v1"
FULL_VALUES = [  # every optional feature on
    "kafka.securityProtocol=SASL_SSL",
    "kafka.sasl.mechanism=SCRAM-SHA-256",
    "kafka.sasl.username=svc-streamproc",
    "kafka.sasl.passwordSecret.name=kafka-sasl",
    "kafka.tls.caSecret.name=kafka-ca",
    "kafka.tls.clientCertSecret.name=kafka-client",
    "schemaRegistry.url=http://registry:8081",
    "llm.provider=openai",
    "llm.model=gpt-4o-mini",
    "llm.baseUrl=https://llm.internal/v1",
    "llm.apiKeySecret.name=llm-key",
    "replicaCount=4",
]
PROMETHEUS_OWN = {"up"}  # series Prometheus makes itself


def tool(name: str) -> Path:
    path = TOOLS / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make tools` (scripts/install-test-tools.sh)")
    return path


def render(*sets: str, api_versions: tuple[str, ...] = (CRD_API,)) -> list[dict[str, Any]]:
    args = [str(tool("bin/helm-render")), "--name", "fraud", "--namespace", "risk"]
    args += ["--kube-version", K8S_VERSION]
    for version in api_versions:
        args += ["--api-versions", version]
    for s in sets:
        args += ["--set", s]
    out = subprocess.run([*args, str(CHART)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(streamproc_[a-z0-9_]+|up)\b(?!\s*\()", expr))


def exported_sample_names() -> set[str]:
    """Every sample name the worker's registry can export (families x type suffixes)."""
    suffixes = {"counter": ["_total", "_created"], "gauge": [""], "histogram": []}
    names: set[str] = set()
    for family in Metrics().registry.collect():
        if family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count", "_created")}
        else:
            names |= {family.name + s for s in suffixes[family.type]}
    return names


# -- Helm ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sets",
    [(), tuple(FULL_VALUES), ("persistence.enabled=false", "podDisruptionBudget.enabled=false")],
    ids=["defaults", "everything-on", "no-persistence"],
)
def test_chart_renders_manifests_that_kubernetes_accepts(sets: tuple[str, ...]) -> None:
    docs = render(*sets)
    core = [d for d in docs if not d["apiVersion"].startswith("monitoring.coreos.com")]
    for doc in core:  # raises ValidationError naming the path and the problem
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    kinds = {d["kind"] for d in docs}
    assert {"StatefulSet", "Service", "ConfigMap", "ServiceAccount", "Job"} <= kinds
    assert {"ServiceMonitor", "PrometheusRule"} <= kinds


def test_manifest_validation_can_fail() -> None:
    [sts] = by_kind(render(), "StatefulSet")
    sts["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, K8S_VERSION, strict=True)
    sts = by_kind(render(), "StatefulSet")[0]
    sts["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, K8S_VERSION, strict=True)


def test_worker_pod_is_locked_down_and_probed() -> None:
    docs = render(*FULL_VALUES)
    [sts] = by_kind(docs, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    [worker] = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert worker["securityContext"]["readOnlyRootFilesystem"] is True
    assert worker["securityContext"]["allowPrivilegeEscalation"] is False
    assert worker["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False
    ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert "http" in ports
    assert worker["resources"]["requests"] and worker["resources"]["limits"]["memory"]
    assert sts["spec"]["replicas"] == 4
    [claim] = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    mounts = {m["mountPath"]: m for m in worker["volumeMounts"]}
    assert "/var/lib/streamproc" in mounts and "/tmp" in mounts  # writable places only
    [pdb] = by_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]


def test_secrets_are_files_and_the_config_is_one_the_worker_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(*FULL_VALUES)
    [sts] = by_kind(docs, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    [worker] = pod["containers"]
    config_map = next(
        d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == "fraud-streamproc"
    )
    config_text = config_map["data"]["streamproc.yaml"]
    config = yaml.safe_load(config_text)

    # Every key is a real setting, and Settings loads the file as the worker would.
    assert set(config) <= set(Settings.model_fields), set(config) - set(Settings.model_fields)
    path = tmp_path / "streamproc.yaml"
    path.write_text(config_text)
    for key in [k for k in os.environ if k.startswith("STREAMPROC_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("STREAMPROC_CONFIG_FILE", str(path))
    settings = Settings()
    assert settings.kafka_security_protocol.value == "SASL_SSL"
    assert settings.kafka_sasl_mechanism.value == "SCRAM-SHA-256"
    assert settings.llm_provider.value == "openai" and settings.llm_model == "gpt-4o-mini"

    # Secrets: never in the ConfigMap or env, always a mounted file the config points at.
    assert "password" not in config and "api_key" not in config
    assert all(not e["name"].endswith(("PASSWORD", "API_KEY")) for e in worker["env"])
    mounted = {m["mountPath"] for m in worker["volumeMounts"]}
    for key in (
        "kafka_sasl_password_file",
        "kafka_ssl_ca_file",
        "kafka_ssl_cert_file",
        "kafka_ssl_key_file",
        "llm_api_key_file",
    ):
        assert str(Path(config[key]).parent) in mounted, key
    secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"kafka-sasl", "kafka-ca", "kafka-client", "llm-key"}

    # The grace period covers the worker's own drain time plus the consumer's stop.
    assert pod["terminationGracePeriodSeconds"] > settings.shutdown_grace_s + 10


def test_config_changes_roll_the_pods() -> None:
    def checksum(*sets: str) -> str:
        [sts] = by_kind(render(*sets), "StatefulSet")
        return str(sts["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum() == checksum()
    assert checksum() != checksum("settings.case_settle_s=9")


def test_chart_refuses_incomplete_security_settings() -> None:
    args = [str(tool("bin/helm-render")), "--set", "kafka.securityProtocol=SASL_SSL", str(CHART)]
    out = subprocess.run(args, capture_output=True, text=True, check=False)
    assert out.returncode != 0
    assert "kafka.sasl.username" in out.stderr


def test_operator_resources_only_when_the_crds_exist_and_match_the_service() -> None:
    without = render(api_versions=())
    assert not by_kind(without, "ServiceMonitor") and not by_kind(without, "PrometheusRule")
    docs = render()
    [monitor] = by_kind(docs, "ServiceMonitor")
    service = next(d for d in by_kind(docs, "Service") if "clusterIP" not in d["spec"])
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names
    assert {e["path"] for e in monitor["spec"]["endpoints"]} == {"/metrics"}
    [rule] = by_kind(docs, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES.read_text())  # the shipped rules, unchanged
    [dash] = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    assert json.loads(dash["data"]["streamproc.json"]) == json.loads(DASHBOARD.read_text())


def test_every_value_is_documented() -> None:
    """values.yaml explains itself: a comment right above each top-level key (or its block)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    for n, line in enumerate(lines):
        if re.match(r"^[a-zA-Z]", line):
            above = [a for a in lines[max(0, n - 4) : n] if a.strip()]
            documented = any(a.startswith("#") for a in above) or re.match(r"^[a-zA-Z]", above[-1])
            assert documented, f"values.yaml:{n + 1} {line!r} has no comment"


# -- Prometheus ---------------------------------------------------------------------------


def test_rules_pass_promtool_check_and_unit_tests() -> None:
    promtool = str(tool("bin/promtool"))
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 13 rules found" in check.stdout
    unit = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"],
        cwd=RULES.parent,
        capture_output=True,
        text=True,
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr


@pytest.mark.parametrize(
    ("threshold", "loosened", "alert"),
    [
        ("> 0.01", "> 0.5", "StreamprocDeadLetterSpike"),
        (") < 3\n", ") < 1.5\n", "StreamprocBriefUsefulnessLow"),
        (") < 0.7\n", ") < 0.5\n", "StreamprocBriefAgreementLow"),
        (
            "(streamproc_llm_cost_estimated) == 0",
            "(streamproc_llm_cost_estimated) >= 0",
            "StreamprocLLMCostUnpriced",
        ),
    ],
)
def test_rule_tests_catch_a_changed_threshold(
    tmp_path: Path, threshold: str, loosened: str, alert: str
) -> None:
    """The promtool tests are not vacuous: loosen one rule and they fail."""
    rules = RULES.read_text()
    assert rules.count(threshold) == 1
    (tmp_path / "alerts.yml").write_text(rules.replace(threshold, loosened))
    (tmp_path / "alerts_test.yml").write_text((RULES.parent / "alerts_test.yml").read_text())
    unit = subprocess.run(
        [str(tool("bin/promtool")), "test", "rules", "alerts_test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert unit.returncode != 0
    assert alert in unit.stdout + unit.stderr


def test_rules_and_dashboard_query_only_metrics_the_worker_defines() -> None:
    """The unit-level half; tests/integration/test_observability.py scrapes a live worker."""
    exported = exported_sample_names()
    for name in queried_metrics():
        assert name in exported or name in PROMETHEUS_OWN, f"{name} is not exported"


def queried_metrics() -> set[str]:
    names: set[str] = set()
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            names |= metric_names(rule["expr"])
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            names |= metric_names(target["expr"])
    return names


# -- Grafana ------------------------------------------------------------------------------


def test_dashboard_covers_what_sres_watch() -> None:
    dash = json.loads(DASHBOARD.read_text())
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    for needed in (
        "streamproc_events_consumed_total",  # throughput per topic
        "streamproc_consumer_lag",
        "streamproc_brief_latency_seconds_bucket",
        "streamproc_llm_request_duration_seconds_bucket",
        "streamproc_llm_tokens_total",
        "streamproc_llm_cost_usd_total",
        "streamproc_llm_fallbacks_total",
        "streamproc_llm_circuit_state",
        "streamproc_dlq_published_total",
        "streamproc_guardrail_violations_total",
        "streamproc_state_entries",
    ):
        assert needed in exprs, needed
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(streamproc_brief_latency" in exprs
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
    # No two panels overlap on the grid.
    cells: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        area = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not area & cells, p["title"]
        assert g["x"] + g["w"] <= 24
        cells |= area


# -- Compose and Dockerfile -----------------------------------------------------------------


def _interpolate(value: Any) -> Any:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR-default}, with the environment unset."""
    if isinstance(value, dict):
        return {k: _interpolate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v) for v in value]
    if isinstance(value, str):
        return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m[1] or "", value)
    return value


def compose_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(tool("compose_spec.json").read_text())
    assert schema["$schema"].startswith("http://json-schema.org/draft/2019-09/")
    return jsonschema.Draft201909Validator(schema)


def test_compose_file_validates_against_the_compose_specification() -> None:
    doc = _interpolate(yaml.safe_load(COMPOSE.read_text()))
    validator = compose_validator()
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(doc)]
    assert not errors
    broken = json.loads(json.dumps(doc))
    broken["services"]["worker"]["stop_grace"] = "30s"  # not a Compose key
    assert list(validator.iter_errors(broken)), "the schema check cannot fail"


def test_compose_wires_the_stack_together() -> None:
    doc = _interpolate(yaml.safe_load(COMPOSE.read_text()))
    services = doc["services"]
    assert {
        "kafka",
        "schema-registry",
        "topics",
        "worker",
        "prometheus",
        "grafana",
        "ollama",
    } <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "KRaft" not in services["kafka"]["environment"]  # roles say it instead:
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["ollama"]["profiles"] == ["llm"]
    for name, service in services.items():
        for dep in service.get("depends_on", []):
            assert dep in services, f"{name} depends on unknown {dep}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO_ROOT / source).exists(), f"{name} mounts missing {source}"
        env = service.get("environment", {})
        for key in env:
            if key.startswith("STREAMPROC_") and key != "STREAMPROC_CONFIG_FILE":
                field = key.removeprefix("STREAMPROC_").lower()
                assert field in Settings.model_fields, f"{name}: {key} is not a setting"
    worker = services["worker"]
    assert worker["read_only"] is True
    assert worker["command"] == ["worker"]
    assert worker["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    prom = yaml.safe_load((REPO_ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert prom["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert any(
        v.endswith(":/etc/prometheus/alerts.yml:ro") for v in services["prometheus"]["volumes"]
    )
    [job] = prom["scrape_configs"]
    assert job["dns_sd_configs"][0]["names"] == ["worker"]
    assert job["dns_sd_configs"][0]["port"] == int(worker["environment"]["STREAMPROC_HTTP_PORT"])


def test_dockerfile_installs_the_wheel_and_runs_unprivileged() -> None:
    """The run stage installs the wheel the build stage made, never a source tree (what
    the wheel carries is checked in tests/integration/test_packaging.py)."""
    text = (REPO_ROOT / "Dockerfile").read_text()
    build, run = re.split(r"^FROM ", text, flags=re.M)[1:]
    assert "pip wheel --no-deps --wheel-dir /wheels ." in build
    assert "COPY --from=build /wheels /tmp/wheels" in run
    assert re.search(
        r"pip install -c constraints.txt --no-deps /tmp/wheels/streamproc-\*\.whl", run
    )
    assert not re.search(r"^COPY (streamproc|schemas|topics|prompts) ", run, flags=re.M)
    assert "-e ." not in text and "--editable" not in text
    assert re.search(r"^USER 10001", run, flags=re.M)
    assert "-c constraints.txt -r /tmp/requirements.txt" in run
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", ".tools"} <= set(ignored)
