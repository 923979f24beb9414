"""Fault suite, model: the provider down, slow, rate limiting and answering garbage, under load.

Run A (no model) and run B (model configured, provider down) each consume the same burst
of events from a fresh broker; their ingestion rates are measured from the workers' own
counters and reported (speed is a benchmark figure, not asserted here). Run B then goes
through each fault in turn, each for PHASE_S seconds while new cases arrive: every case
must be briefed (deterministic fallback, with the fault's reason) and the worker must
keep consuming. Finally the provider recovers: the circuit closes and briefs come from
the model again. STREAMPROC_FAULT_SCALE=full makes each phase a minute.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from streamproc.cli.kafkaio import make_codec
from streamproc.config import Settings
from streamproc.kafka.broker import EmbeddedBroker, stop_child
from streamproc.kafka.clients import producer_config
from streamproc.sim.labelled import EvalSet, build_eval_set
from tests.integration.conftest import (
    WorkerHandle,
    cli,
    fault_env,
    in_event_time,
    produce_events,
    published_briefs,
    start_worker,
)
from tests.llm_stub import StubInThread

pytestmark = [pytest.mark.integration, pytest.mark.faults]
FULL = os.environ.get("STREAMPROC_FAULT_SCALE") == "full"
PHASE_S = 60.0 if FULL else 3.0  # short: one batch of new cases per fault
# History-only accounts in the burst, ~40 events each: ~16,000 events, enough for a rate
# that is not dominated by the first fetches (a 5,000-event burst varied 3x between runs).
BURST_NOISE = 1000 if FULL else 400
FAULTS = {  # stub mode → fallback reasons it may cause (the circuit opens on repeats)
    "500": {"provider_error", "circuit_open"},
    "hang": {"timeout", "circuit_open"},
    "429": {"rate_limited", "circuit_open"},
    "badschema": {"invalid_output", "circuit_open"},
    "nonjson": {"invalid_output", "provider_error", "circuit_open"},
}


def _publish(settings: Settings, s: EvalSet) -> int:
    producer = Producer(producer_config(settings))
    n = produce_events(producer, make_codec(settings), in_event_time(s))
    assert producer.flush(30.0) == 0
    return n


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _ingest_rate(worker: WorkerHandle, settings: Settings, burst: EvalSet) -> float:
    """Events per second from the first to the last consumed, by the worker's counter."""
    n = _publish(settings, burst)
    consumed = lambda: worker.metric("streamproc_events_consumed_total")  # noqa: E731
    _wait(lambda: consumed() > 0, 60, "nothing consumed")
    started = time.monotonic()
    _wait(lambda: consumed() >= n, 120, "burst not consumed")
    return n / max(time.monotonic() - started, 1e-3)


def _all_briefed(settings: Settings, case_ids: set[str], what: str) -> list[dict[str, Any]]:
    """The briefs of `case_ids`, once each has one (read once per poll, not twice)."""
    deadline = time.monotonic() + 60
    while True:
        got = _briefs_for(settings, case_ids)
        if len({b["case_id"] for b in got}) >= len(case_ids):
            return got
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _briefs_for(settings: Settings, case_ids: set[str]) -> list[dict[str, Any]]:
    out = []
    for b in published_briefs(settings):
        if b["case_id"] in case_ids:
            out.append(b)
    return out


def test_model_faults_for_minutes_under_load(tmp_path: Path) -> None:
    now = int(time.time() * 1000) - 60_000
    burst = build_eval_set(seed=21, per_kind=1, now_ms=now, noise_accounts=BURST_NOISE, tag="b-")
    report: dict[str, Any] = {"phase_s": PHASE_S}

    with EmbeddedBroker(log_path=tmp_path / "broker-a.log").running() as broker_a:
        env_a = fault_env(broker_a.bootstrap, tmp_path, "a")
        assert cli(env_a, "topics", "apply").returncode == 0
        worker_a = start_worker(env_a, tmp_path / "worker-a.log")
        try:
            rate_a = _ingest_rate(worker_a, Settings(kafka_bootstrap=broker_a.bootstrap), burst)
        finally:
            stop_child(worker_a.proc, 30.0)

    with (
        EmbeddedBroker(log_path=tmp_path / "broker-b.log").running() as broker_b,
        StubInThread() as stub,
    ):
        settings = Settings(kafka_bootstrap=broker_b.bootstrap)
        env_b = {
            **fault_env(broker_b.bootstrap, tmp_path, "b"),
            "STREAMPROC_LLM_PROVIDER": "openai",
            "STREAMPROC_LLM_BASE_URL": f"{stub.url}/v1",
            "STREAMPROC_LLM_MODEL": "stub-gpt",
            "STREAMPROC_LLM_TIMEOUT_S": "1",
            "STREAMPROC_LLM_MAX_RETRIES": "1",
            "STREAMPROC_LLM_RETRY_AFTER_CAP_S": "1",
            "STREAMPROC_LLM_BREAKER_THRESHOLD": "3",
            "STREAMPROC_LLM_BREAKER_RESET_S": "3",
            "STREAMPROC_LLM_CASE_DEADLINE_S": "8",
        }
        assert cli(env_b, "topics", "apply").returncode == 0
        stub.default = "500"  # down from the start
        worker = start_worker(env_b, tmp_path / "worker-b.log")
        try:
            rate_b = _ingest_rate(worker, settings, burst)
            report["ingest_events_per_s"] = {"no_model": round(rate_a), "model_down": round(rate_b)}
            report["ingest_ratio"] = round(rate_b / rate_a, 3)
            cases = {label.case_id for label in burst.labels}
            _wait(lambda: len(_briefs_for(settings, cases)) >= len(cases), 60, "burst not briefed")
            seen_open = worker.metric("streamproc_llm_circuit_state") == 2

            phases = {}
            for n, (mode, reasons) in enumerate(FAULTS.items()):
                stub.default = mode
                started = time.monotonic()
                batches = 0
                while time.monotonic() - started < PHASE_S or batches == 0:
                    batch = build_eval_set(
                        seed=100 + n * 50 + batches,
                        per_kind=1,
                        now_ms=int(time.time() * 1000) - 60_000,
                        tag=f"{mode}-{batches}-",
                    )
                    _publish(settings, batch)
                    ids = {label.case_id for label in batch.labels}
                    got = _all_briefed(
                        settings, ids, f"cases not briefed while the model was {mode}"
                    )
                    assert {b["generation"]["method"] for b in got} == {"FALLBACK"}, mode
                    why = Counter(b["generation"]["fallback_reason"] for b in got)
                    assert set(why) <= reasons, (mode, why)
                    batches += 1
                    seen_open |= worker.metric("streamproc_llm_circuit_state") == 2
                phases[mode] = {"batches": batches, "cases": batches * 8}
            report["phases"] = phases
            assert seen_open, "the circuit never opened"
            assert worker.proc.poll() is None

            stub.default = "ok"  # the provider is back
            time.sleep(3.5)  # the breaker's reset time: the next call is a half-open probe
            recovered = build_eval_set(
                seed=999, per_kind=1, now_ms=int(time.time() * 1000) - 60_000, tag="ok-"
            )
            probe = _only(recovered, recovered.labels[0].account_id)
            _publish(settings, probe)
            probe_ids = {probe.labels[0].case_id}
            _wait(lambda: _briefs_for(settings, probe_ids), 60, "probe case not briefed")
            assert _briefs_for(settings, probe_ids)[0]["generation"]["method"] == "LLM"
            _wait(
                lambda: worker.metric("streamproc_llm_circuit_state") == 0, 30, "circuit not closed"
            )
            rest = EvalSet(
                [e for e in recovered.transactions if e not in probe.transactions],
                [e for e in recovered.signals if e not in probe.signals],
                [e for e in recovered.alerts if e not in probe.alerts],
                recovered.labels[1:],
            )
            _publish(settings, rest)
            ids = {label.case_id for label in rest.labels}
            got = _all_briefed(settings, ids, "not briefed after recovery")
            methods = Counter(b["generation"]["method"] for b in got)
            assert methods == {"LLM": len(ids)}, methods
            report["after_recovery"] = dict(methods)
            report["dead_letters"] = worker.metric("streamproc_dlq_published_total")
            assert report["dead_letters"] == 0
        finally:
            stop_child(worker.proc, 30.0)
    (tmp_path / "llm-faults.json").write_text(json.dumps(report, indent=2))
    print("\nllm faults:", json.dumps(report))


def _only(s: EvalSet, account: str) -> EvalSet:
    """The events and label of one account of a set."""
    mine = lambda events: [e for e in events if e["account_id"] == account]  # noqa: E731
    return EvalSet(
        mine(s.transactions),
        mine(s.signals),
        mine(s.alerts),
        [label for label in s.labels if label.account_id == account],
    )
