"""A real model server in make test: llama.cpp's server with SmolLM2-135M, on loopback.

The worker talks to it as to any OpenAI-compatible endpoint (LLM_PROVIDER=openai,
LLM_DIALECT=llamacpp), with the settings the README gives for local models: long
timeout and deadline, one call at a time, greedy decoding. The model is tiny and its
prose is poor; quality is not what is tested here. What is: the request is one a real
server with grammar-constrained decoding accepts, the answer parses and validates,
tokens are read, the call is audited, and the guardrails hold (judged against the
assessment the model was given, not with the guardrails' code).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streamproc.brief.model import CaseBrief, RiskLevel
from streamproc.cli.kafkaio import publish_events, read_records
from streamproc.config import Settings
from streamproc.contracts.records import parse_timestamp
from streamproc.kafka.broker import stop_child
from streamproc.llm.local import LocalServer, cpu_problem, installed, serving, settings_env
from streamproc.sim.scenario import build_scenario
from tests.integration.conftest import start_worker, tail_json
from tests.llm_stub import StubInThread

pytestmark = pytest.mark.integration
MODELS = Path(__file__).resolve().parents[2] / ".models"
ACCOUNTS = ("acct-ato-001", "acct-mule-001")


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    assert installed(MODELS), "make test installs it: make models (scripts: streamproc.llm.local)"
    problem = cpu_problem()
    if problem:  # make test said so in one line, when it installed the server
        pytest.skip(problem)
    with serving(MODELS, tmp_path_factory.mktemp("llama") / "llama-server.log") as server:
        yield server


def epoch_ms(brief: dict[str, Any]) -> dict[str, Any]:
    """`tail` prints timestamps in ISO-8601; the model takes epoch milliseconds."""
    out = {k: parse_timestamp(brief[k], k) for k in ("generated_at", "window_start", "window_end")}
    timeline = [{**t, "occurred_at": parse_timestamp(t["occurred_at"], "t")} for t in
                brief["timeline"]]  # fmt: skip
    return {**brief, **out, "timeline": timeline}


def case_data(user: str) -> dict[str, object]:
    doc = user.split("<case_data>\n", 1)[1].rsplit("\n</case_data>", 1)[0]
    data: dict[str, object] = json.loads(doc)
    return data


def test_the_worker_briefs_with_a_real_local_model(
    env: dict[str, str], settings: Settings, topics: None, llama: LocalServer, tmp_path: Path
) -> None:
    """The real local model is the primary; a shadow variant with the next prompt version
    runs beside it against a stand-in OpenAI server (strict schema rules: hence its own
    dialect), and never reaches the analysts' topic."""
    key = tmp_path / "shadow-key"
    key.write_text("sk-shadow-test")
    with StubInThread() as stub:
        shadow = {
            "base_url": f"{stub.url}/v1",
            "model": "stub-shadow",
            "dialect": "openai",
            "prompt_version": "brief-v2",
            "api_key_file": str(key),
            "timeout_s": 10,
        }
        _briefs_with_a_real_model_and_a_shadow(env, settings, llama, tmp_path, shadow)


def _briefs_with_a_real_model_and_a_shadow(
    env: dict[str, str],
    settings: Settings,
    llama: LocalServer,
    tmp_path: Path,
    shadow: dict[str, Any],
) -> None:
    worker = start_worker(
        {
            **env,
            **settings_env(llama),  # the README's settings for a local model on 2 cores
            "STREAMPROC_LLM_SHADOW": json.dumps(shadow),
        },
        tmp_path / "worker.log",
    )
    try:
        sc = build_scenario(seed=5, now_ms=int(time.time() * 1000))
        pick = lambda evs: [e for e in evs if e["account_id"] in ACCOUNTS]  # noqa: E731
        publish_events(settings, "fraud.transactions.v1", pick(sc.transactions))
        publish_events(settings, "fraud.device-signals.v1", pick(sc.signals))
        publish_events(settings, "fraud.alerts.v1", pick(sc.alerts))
        briefs = tail_json(env, "fraud.case-briefs.v1", len(ACCOUNTS), timeout=600)
        n = 2 * len(ACCOUNTS)  # the primary's audit records and the shadow's
        audits = [
            r["value"]
            for r in read_records(settings, "fraud.llm-audit.v1", max_records=n, timeout_s=60)
        ]
        variants = sorted(a["variant"] for a in audits)
        assert variants == ["primary"] * len(ACCOUNTS) + ["shadow"] * len(ACCOUNTS)
        audits = [a for a in audits if a["variant"] == "primary"]
        log = (tmp_path / "worker.log").read_text()
        assert len(briefs) == len(ACCOUNTS), log[-3000:]
        by_case = {a["case_id"]: a for a in audits}
        for brief in briefs:
            parsed = CaseBrief.model_validate(epoch_ms(brief))  # valid against the contract
            gen = parsed.generation
            assert gen.method == "LLM", (gen.fallback_reason, by_case.get(parsed.case_id))
            assert gen.provider == "openai" and gen.model == llama.model
            assert gen.prompt_tokens > 0 and gen.completion_tokens > 0  # usage read
            audit = by_case[parsed.case_id]
            assert audit["outcome"] == "llm" and audit["validation"] in ("ok", "repaired")
            assert "guardrail_violations" in audit and audit["responses"]
            # Guardrails, judged against what the model was told the floor is.
            floor = case_data(audit["request"]["user"])["assessment"]
            assert isinstance(floor, dict)
            assert parsed.risk_level.rank >= RiskLevel(floor["risk_level"]).rank
            assert parsed.risk_score >= floor["risk_score"]
            assert set(floor["reason_codes"]) <= {r.value for r in parsed.reason_codes}
            case_events = {t.event_id for t in parsed.timeline}
            for fact in parsed.key_facts:
                assert set(fact.evidence_event_ids) <= case_events
        assert worker.metric("streamproc_llm_tokens_total", type="completion") > 0
        assert worker.metric("streamproc_briefs_published_total", method="LLM") == len(ACCOUNTS)
        assert {b["generation"]["variant"] for b in briefs} == {"primary"}
        shadows = tail_json(env, "fraud.case-briefs.shadow.v1", len(ACCOUNTS), timeout=120)
        assert sorted(b["case_id"] for b in shadows) == sorted(b["case_id"] for b in briefs)
        for brief in shadows:
            gen = brief["generation"]
            assert (gen["variant"], gen["model"], gen["prompt_version"]) == (
                "shadow",
                "stub-shadow",
                "brief-v2",
            )
            assert gen["method"] == "LLM", gen["fallback_reason"]
    finally:
        stop_child(worker.proc, 20)


def test_make_eval_local_runs_the_labelled_set_through_the_model(tmp_path: Path) -> None:
    """`make eval-local` on one held-out case: the model's report, the deterministic one
    for the same case, and the quality card with the model's own draft beside them (so
    the target cannot silently stop working, as `make bench` once did)."""
    from streamproc.tooling.evaluation.cli import main
    from streamproc.tooling.evaluation.load import HELD_OUT_SET

    if cpu_problem():
        pytest.skip(str(cpu_problem()))
    args = ["--local-model", str(MODELS), "--set", f"held-out={HELD_OUT_SET}", "--limit", "1"]
    rc = main([*args, "--out", str(tmp_path), "--baseline", str(tmp_path / "b.json")])
    name = "report-openai-SmolLM2-135M-Instruct-Q4_1-limit-1"
    assert rc == 0, (tmp_path / f"{name}.md").read_text()
    report = json.loads((tmp_path / f"{name}.json").read_text())
    split = report["splits"]["held-out"]
    [case] = split["cases"]
    assert case["method"] == "LLM" and case["latency_ms"] > 0
    metrics = split["metrics"]
    assert metrics["draft_risk_agreement"] is not None and metrics["draft_support"] is not None
    assert "SmolLM2-135M-Instruct" in report["model"]["about"]
    card = (tmp_path / "quality-card-limit-1.md").read_text()
    assert "deterministic" in card and "its own draft" in card
