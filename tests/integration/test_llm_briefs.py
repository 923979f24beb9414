"""The worker with a model behind it: healthy, down, hanging, rate limiting (stand-in provider)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamproc.cli.kafkaio import publish_events, read_records
from streamproc.config import Settings
from streamproc.kafka.broker import stop_child
from streamproc.sim.scenario import build_scenario
from tests.integration.conftest import WorkerHandle, start_worker, tail_json
from tests.llm_stub import StubInThread, StubLLM

pytestmark = pytest.mark.integration
ACCOUNTS = ("acct-ct-001", "acct-ato-001", "acct-benign-001")
PII = [
    "Anna Schmidt",
    "James Carter",
    "Ion Popescu",
    "GB82WEST",
    "anna.schmidt@example.com",
    "7946 0958",
    "4111111111111111",
    "4111 1111 1111 1111",
    "198.51.100.23",
]


@pytest.fixture()
def stub() -> Iterator[StubLLM]:
    with StubInThread() as server:
        yield server


def llm_worker(env: dict[str, str], stub: StubLLM, tmp_path: Path, **extra: str) -> WorkerHandle:
    return start_worker(
        {
            **env,
            "STREAMPROC_LLM_PROVIDER": "openai",
            "STREAMPROC_LLM_BASE_URL": f"{stub.url}/v1",
            "STREAMPROC_LLM_MODEL": "stub-gpt",
            "STREAMPROC_LLM_API_KEY": "sk-test-secret",
            "STREAMPROC_LLM_TIMEOUT_S": "2",
            **extra,
        },
        tmp_path / "worker.log",
    )


def publish_cases(settings: Settings) -> None:
    sc = build_scenario(seed=5, now_ms=int(time.time() * 1000))
    pick = lambda evs: [e for e in evs if e["account_id"] in ACCOUNTS]  # noqa: E731
    publish_events(settings, "fraud.transactions.v1", pick(sc.transactions))
    publish_events(settings, "fraud.device-signals.v1", pick(sc.signals))
    publish_events(settings, "fraud.alerts.v1", pick(sc.alerts))


def test_healthy_model_briefs_every_case_and_is_audited(
    env: dict[str, str], settings: Settings, topics: None, stub: StubLLM, tmp_path: Path
) -> None:
    worker = llm_worker(env, stub, tmp_path)
    try:
        publish_cases(settings)
        briefs = {b["case_id"]: b for b in tail_json(env, "fraud.case-briefs.v1", 3)}
        assert {b["generation"]["method"] for b in briefs.values()} == {"LLM"}
        assert briefs["case-ato-001"]["risk_level"] == "CRITICAL"  # floor over the model's HIGH
        assert briefs["case-benign-001"]["risk_level"] == "HIGH"  # the model may raise it
        audits = list(read_records(settings, "fraud.llm-audit.v1", max_records=3, timeout_s=20))
        assert len(audits) == 3
        for record in audits:
            audit = record["value"]
            assert audit["validation"] == "ok" and audit["prompt_version"] == "brief-v1"
            assert "<case_data>" in audit["request"]["user"] and audit["responses"]
        sent = stub.sent() + json.dumps(audits).encode()
        for value in PII:
            assert value.encode() not in sent, value
        assert "sk-test-secret" not in (tmp_path / "worker.log").read_text()
        assert worker.metric("streamproc_llm_tokens_total", type="prompt") >= 3 * 1200
        assert worker.metric("streamproc_briefs_published_total", method="LLM") == 3
        assert worker.metric("streamproc_guardrail_violations_total", check="risk_floor") >= 1
        assert worker.metric("streamproc_pii_redactions_total") > 0
    finally:
        stop_child(worker.proc, 20)


def test_model_down_every_case_falls_back_and_the_circuit_opens(
    env: dict[str, str], settings: Settings, topics: None, stub: StubLLM, tmp_path: Path
) -> None:
    stub.default = "500"
    worker = llm_worker(
        env,
        stub,
        tmp_path,
        STREAMPROC_LLM_MAX_RETRIES="1",
        STREAMPROC_LLM_BREAKER_THRESHOLD="2",
        STREAMPROC_LLM_BREAKER_RESET_S="600",
    )
    try:
        publish_cases(settings)
        briefs = tail_json(env, "fraud.case-briefs.v1", 3)
        assert {b["generation"]["method"] for b in briefs} == {"FALLBACK"}
        reasons = {b["generation"]["fallback_reason"] for b in briefs}
        assert reasons <= {"provider_error", "circuit_open"} and "provider_error" in reasons
        assert len(stub.requests) == 3 * 2  # three calls in flight at once, two attempts each
        deadline = time.monotonic() + 5
        while worker.metric("streamproc_llm_circuit_state") != 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert worker.metric("streamproc_llm_circuit_state") == 2
        # Open: a new case is briefed at once from the events, without a request.
        sc = build_scenario(seed=5, now_ms=int(time.time() * 1000))
        [alert] = [a for a in sc.alerts if a["account_id"] == "acct-benign-001"]
        publish_events(
            settings,
            "fraud.alerts.v1",
            [
                {
                    **alert,
                    "event_id": "evt-new",
                    "alert_id": "alr-new",
                    "case_id": "case-new",
                    "transaction_ids": [],
                }
            ],
        )
        [*_, new] = tail_json(env, "fraud.case-briefs.v1", 4)
        assert new["case_id"] == "case-new"
        assert new["generation"]["fallback_reason"] == "circuit_open"
        assert len(stub.requests) == 6
        assert worker.metric("streamproc_llm_fallbacks_total") == 4
    finally:
        stop_child(worker.proc, 20)


def test_hanging_model_times_out_without_holding_up_ingestion(
    env: dict[str, str], settings: Settings, topics: None, stub: StubLLM, tmp_path: Path
) -> None:
    stub.default = "hang"
    worker = llm_worker(
        env,
        stub,
        tmp_path,
        STREAMPROC_LLM_TIMEOUT_S="1",
        STREAMPROC_LLM_MAX_RETRIES="0",
        STREAMPROC_LLM_CASE_DEADLINE_S="4",
    )
    try:
        publish_cases(settings)
        time.sleep(2.0)  # every call is hanging now
        assert worker.metric("streamproc_llm_in_flight") >= 1
        later = build_scenario(seed=6, now_ms=int(time.time() * 1000)).transactions[:50]
        publish_events(settings, "fraud.transactions.v1", later)

        def consumed() -> float:
            return worker.metric("streamproc_events_consumed_total", topic="fraud.transactions.v1")

        deadline = time.monotonic() + 10
        while consumed() < 50 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert consumed() >= 50  # ingestion went on while the model hung
        briefs = tail_json(env, "fraud.case-briefs.v1", 3)
        assert {b["generation"]["fallback_reason"] for b in briefs} == {"timeout"}
    finally:
        stop_child(worker.proc, 20)


def test_rate_limited_model_recovers_after_retry_after(
    env: dict[str, str], settings: Settings, topics: None, stub: StubLLM, tmp_path: Path
) -> None:
    stub.script = ["429", "429"]
    worker = llm_worker(env, stub, tmp_path)
    try:
        publish_cases(settings)
        briefs = tail_json(env, "fraud.case-briefs.v1", 3)
        assert {b["generation"]["method"] for b in briefs} == {"LLM"}
        assert worker.metric("streamproc_llm_retries_total") >= 2
    finally:
        stop_child(worker.proc, 20)


def test_garbage_answers_fall_back_as_invalid_output_and_are_audited(
    env: dict[str, str], settings: Settings, topics: None, stub: StubLLM, tmp_path: Path
) -> None:
    stub.script = ["nonjson", "badschema"] * 3  # first answer and its repair, per case
    stub.default = "badschema"
    worker = llm_worker(env, stub, tmp_path)
    try:
        publish_cases(settings)
        briefs = tail_json(env, "fraud.case-briefs.v1", 3)
        assert {b["generation"]["fallback_reason"] for b in briefs} == {"invalid_output"}
        audits = list(read_records(settings, "fraud.llm-audit.v1", max_records=3, timeout_s=20))
        assert len(audits) == 3
        assert {a["value"]["validation"] for a in audits} == {"invalid"}
        assert all(len(a["value"]["responses"]) == 2 for a in audits)  # one repair each
        assert worker.metric("streamproc_llm_fallbacks_total", reason="invalid_output") == 3
        assert worker.metric("streamproc_llm_circuit_state") == 0  # the provider is up
    finally:
        stop_child(worker.proc, 20)
