"""Dashboards and alerts query what a running worker exports: a real worker (with a model
behind it) is scraped directly and by a real Prometheus that loads the shipped rules and
runs every dashboard query."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from streamproc.config import Settings
from streamproc.kafka.broker import EmbeddedBroker, free_port, spawn_child, stop_child
from tests.integration.conftest import WorkerHandle, cli, start_worker, tail_json, worker_env
from tests.integration.test_operations import _publish
from tests.llm_stub import StubInThread
from tests.unit.test_deploy import DASHBOARD, PROMETHEUS_OWN, RULES, metric_names, tool

pytestmark = pytest.mark.integration
# Queries that must return series once a few cases were briefed by the model.
MUST_HAVE_DATA = (
    "streamproc_events_consumed_total",
    "streamproc_briefs_published_total",
    "streamproc_consumer_lag",
    "streamproc_brief_latency_seconds_bucket",
    "streamproc_llm_request_duration_seconds_bucket",
    "streamproc_llm_tokens_total",
    "streamproc_llm_cost_usd_total",
    "streamproc_llm_circuit_state",
    "streamproc_state_entries",
    "streamproc_pii_redactions_total",
    "streamproc_llm_tokens_spent_today",
)


@pytest.fixture(scope="module")
def llm_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerHandle]:
    """One worker for the module's tests (each reads it, none changes it)."""
    tmp_path = tmp_path_factory.mktemp("observability")
    with (
        EmbeddedBroker(log_path=tmp_path / "broker.log").running() as broker,
        StubInThread() as stub,
    ):
        env = worker_env(broker.bootstrap, tmp_path)
        settings = Settings(kafka_bootstrap=broker.bootstrap)
        assert cli(env, "topics", "apply").returncode == 0
        worker = start_worker(
            {
                **env,
                "STREAMPROC_LLM_PROVIDER": "openai",
                "STREAMPROC_LLM_BASE_URL": f"{stub.url}/v1",
                "STREAMPROC_LLM_MODEL": "stub-gpt",
                "STREAMPROC_LLM_API_KEY": "sk-test",
                "STREAMPROC_LLM_DAILY_TOKEN_BUDGET": "1000000",
                "STREAMPROC_LLM_PRICE_PROMPT_PER_1K": "0.15",
                "STREAMPROC_LLM_PRICE_COMPLETION_PER_1K": "0.6",
            },
            tmp_path / "worker.log",
        )
        try:
            n = _publish(settings, seed=5)
            tail_json(env, "fraud.case-briefs.v1", n)
            yield worker
        finally:
            stop_child(worker.proc, 30.0)


def queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every rule and dashboard target."""
    out = []
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        out += [(f"rule {r['alert']}", r["expr"]) for r in group["rules"]]
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for t in panel.get("targets", []):
            expr = t["expr"].replace("$__rate_interval", "1m")
            out.append((f"panel {panel['title']!r}", expr))
    return out


def test_every_queried_metric_is_exported_by_a_running_worker(llm_worker: WorkerHandle) -> None:
    scraped: set[str] = set()
    with_samples: set[str] = set()
    for family in text_string_to_metric_families(llm_worker.get("/metrics").text):
        if family.type == "histogram":
            names = [family.name + s for s in ("_bucket", "_sum", "_count")]
        elif family.type == "counter":
            names = [family.name + "_total"]
        else:
            names = [family.name]
        scraped |= set(names)
        with_samples |= {s.name for s in family.samples}
    for where, expr in queries():
        for name in metric_names(expr) - PROMETHEUS_OWN:
            assert name in scraped, f"{where} queries {name}, which the worker does not export"
    for name in MUST_HAVE_DATA:
        assert name in with_samples, f"{name} has no samples after briefing cases"


def test_cost_is_the_tokens_at_the_configured_prices(llm_worker: WorkerHandle) -> None:
    values = {}
    for family in text_string_to_metric_families(llm_worker.get("/metrics").text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    primary = ("variant", "primary")
    prompt = values[("streamproc_llm_tokens_total", (("type", "prompt"), primary))]
    completion = values[("streamproc_llm_tokens_total", (("type", "completion"), primary))]
    assert prompt > 0 and completion > 0
    assert values[("streamproc_llm_cost_estimated", ())] == 1
    expected = prompt / 1000 * 0.15 + completion / 1000 * 0.6  # the worker's price settings
    assert values[("streamproc_llm_cost_usd_total", (primary,))] == pytest.approx(expected)


def test_prometheus_runs_every_rule_and_dashboard_query(
    llm_worker: WorkerHandle, tmp_path: Path
) -> None:
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": "streamproc",
                "static_configs": [{"targets": [f"127.0.0.1:{llm_worker.port}"]}],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    with (tmp_path / "prometheus.log").open("ab") as log:
        prom = spawn_child(
            [
                str(tool("bin/prometheus")),
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            log=log,
        )
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        _wait_for_samples(api, 'count_over_time(up{job="streamproc"}[1m])', 8)
        failures: list[str] = []
        for where, expr in queries():
            result = _query(api, expr)
            if result["status"] != "success":
                failures.append(f"{where}: {result.get('error')}")
        assert not failures, "\n".join(failures)
        for name in MUST_HAVE_DATA:
            assert _query(api, name)["data"]["result"], f"Prometheus has no {name}"
        assert _query(api, "sum(streamproc_ready)")["data"]["result"][0]["value"][1] == "1"
        rules = httpx.get(f"{api}/rules", timeout=5).json()["data"]["groups"]
        health = {r["name"]: r["health"] for g in rules for r in g["rules"]}
        shipped = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
        assert len(health) == len(shipped) and set(health.values()) == {"ok"}, health
        firing = httpx.get(f"{api}/alerts", timeout=5).json()["data"]["alerts"]
        assert not [a for a in firing if a["state"] == "firing"]  # a healthy worker is quiet
    finally:
        stop_child(prom, 10.0)


def _query(api: str, expr: str) -> dict[str, Any]:
    response = httpx.get(f"{api}/query", params={"query": expr}, timeout=10)
    return dict(response.json())


def _wait_for_samples(api: str, expr: str, n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = _query(api, expr)["data"]["result"]
            if result and float(result[0]["value"][1]) >= n:
                return
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(0.5)
    pytest.fail(f"Prometheus did not collect {n} scrapes in {timeout}s")
