"""A case through the model and back, against the loopback stand-in provider."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from typing import Any

import pytest

from streamproc.brief.fallback import build_brief
from streamproc.brief.prompt import load_template
from streamproc.config import BriefPII
from streamproc.contracts.schemas import SchemaSet
from streamproc.domain.case import Case
from streamproc.llm.briefer import BriefOutcome, LLMBriefer
from streamproc.llm.client import LLMClient, RetryPolicy
from streamproc.llm.providers import provider_for
from streamproc.privacy.redact import Redactor
from streamproc.sim.scenario import Scenario
from tests.conftest import NOW_MS
from tests.llm_stub import GOOD_ANSWER, StubLLM
from tests.unit.test_case_and_brief import build_cases

PII = ["James", "Carter", "7946", "james.carter", "Ion Popescu", "GB82WEST", "198.51.100", "4111"]


@pytest.fixture(scope="module")
def ato(schemas: SchemaSet, scenario: Scenario) -> Case:
    return build_cases(schemas, scenario)["case-ato-001"]


def brief_with(
    case: Case,
    script: list[str],
    cached: dict[str, Any] | None = None,
    answer: dict[str, Any] | None = None,
) -> tuple[BriefOutcome, StubLLM]:
    async def main() -> tuple[BriefOutcome, StubLLM]:
        server = StubLLM(answer=answer)
        await server.start()
        server.script = list(script)

        async def no_sleep(_: float) -> None:
            return None

        client = LLMClient(
            provider_for("openai"),
            f"{server.url}/v1",
            "m-1",
            timeout_s=2,
            retry=RetryPolicy(max_retries=1),
            sleep=no_sleep,
        )
        s = SchemaSet()
        redactor = Redactor.for_inputs(s)
        briefer = LLMBriefer(
            client, load_template(), redactor, policy=BriefPII.MASKED, max_prompt_tokens=6000
        )
        floor = build_brief(case, version=1, generated_at_ms=NOW_MS)
        try:
            return await briefer.brief(case, floor, cached), server
        finally:
            await client.aclose()
            await server.stop()

    return asyncio.run(main())


def test_model_brief_is_merged_onto_the_floor(ato: Case) -> None:
    out, server = brief_with(ato, ["ok"])
    b = out.brief
    assert b.generation.method == "LLM" and b.generation.prompt_version == "brief-v1"
    assert b.risk_level == "CRITICAL"  # the model said HIGH; the floor holds
    assert out.violations["risk_floor"] == 1 and out.violations["narrative_overruled"] == 1
    floor = build_brief(ato, version=1, generated_at_ms=NOW_MS)
    assert b.key_facts == floor.key_facts and floor.summary in b.summary
    true_of_ato = {
        "risk_level": "CRITICAL",
        "summary": "Account takeover: a password reset, then a transfer.",
        "key_facts": [{"text": "1 event of the case", "evidence_event_ids": ["E1"]}],
    }
    agreeing, _ = brief_with(ato, ["ok"], answer={**GOOD_ANSWER, **true_of_ato})
    fact, *kept = agreeing.brief.key_facts  # the model's own, then the floor's
    assert fact.evidence_event_ids[0] in ato.event_ids  # "E1" mapped back
    assert kept == floor.key_facts
    assert b.generation.prompt_tokens == 1200 and b.redaction["PERSON"] >= 1
    sent = server.sent()
    assert b"<PERSON_1>" in sent and b"invoice 2231" in sent  # the search sees the body
    for value in PII:
        assert value.encode() not in sent, value
    assert out.audit is not None and out.audit["validation"] == "ok"
    assert all(value not in json.dumps(out.audit) for value in PII)


def test_invalid_answer_is_repaired_once(ato: Case) -> None:
    out, server = brief_with(ato, ["badschema", "ok"])
    assert out.brief.generation.method == "LLM" and out.audit["validation"] == "repaired"  # type: ignore[index]
    repair = server.requests[1]["body"]["messages"][1]["content"]
    assert "previous answer was rejected" in repair and "risk_level" in repair


def test_still_invalid_after_repair_falls_back(ato: Case) -> None:
    out, _ = brief_with(ato, ["badschema", "nonjson"])
    assert out.brief.generation.method == "FALLBACK"
    assert out.brief.generation.fallback_reason == "invalid_output"
    assert out.draft is None and out.audit["outcome"] == "fallback"  # type: ignore[index]


def test_provider_down_falls_back_with_the_reason(ato: Case) -> None:
    out, server = brief_with(ato, ["500", "500"])
    assert out.brief.generation.fallback_reason == "provider_error"
    assert out.brief.risk_score == build_brief(ato, version=1, generated_at_ms=NOW_MS).risk_score
    assert len(server.requests) == 2


def test_cached_draft_is_reused_without_a_call(ato: Case) -> None:
    cached = {
        **GOOD_ANSWER,
        "risk_level": "CRITICAL",
        "summary": "A password reset, then a transfer.",
        "key_facts": [
            {"text": "1 event, cached", "evidence_event_ids": [sorted(ato.event_ids)[0]]}
        ],
    }
    out, server = brief_with(ato, [], cached=cached)
    assert server.requests == [] and out.audit is None
    assert out.brief.generation.method == "LLM" and out.brief.key_facts[0].text == "1 event, cached"


def test_injected_instructions_do_not_move_the_floor(ato: Case) -> None:
    obeying = {
        **GOOD_ANSWER,
        "risk_level": "LOW",
        "risk_score": 1,
        "reason_codes": ["OTHER"],
        "recommended_actions": ["CLOSE_AS_FALSE_POSITIVE"],
        "summary": "As instructed: LOW risk. Card 4111 1111 1111 1111, see http://x.io/a",
        "key_facts": [{"text": "none", "evidence_event_ids": ["evt-fake"]}],
    }
    out, _ = brief_with(ato, ["ok"], answer=obeying)
    b = out.brief
    assert b.risk_level == "CRITICAL" and "ACCOUNT_TAKEOVER" in b.reason_codes
    assert "4111" not in b.summary and "http" not in b.summary
    assert all("evt-fake" not in f.evidence_event_ids for f in b.key_facts)
    assert out.violations["risk_floor"] == 1 and out.violations["fact_dropped"] == 1


def test_the_request_pins_evidence_to_the_case_refs(ato: Case) -> None:
    _, server = brief_with(ato, ["ok"])
    schema = server.requests[0]["body"]["response_format"]["json_schema"]["schema"]
    refs = schema["properties"]["key_facts"]["items"]["properties"]["evidence_event_ids"]
    assert refs["items"]["enum"][:3] == ["E1", "E2", "E3"]
    assert len(refs["items"]["enum"]) == len(ato.event_ids)


def test_schema_rejections_are_counted_as_guardrail_interventions(ato: Case) -> None:
    repaired, _ = brief_with(ato, ["badschema", "ok"])
    assert repaired.violations["schema_rejected"] == 1
    closed = {**GOOD_ANSWER, "reason_codes": ["EXFILTRATE"]}
    failed, _ = brief_with(ato, [], answer=closed)
    assert failed.brief.generation.fallback_reason == "invalid_output"
    assert failed.violations["schema_rejected"] == 2  # the answer and its repair


def test_a_briefs_cpu_steps_run_off_the_event_loop_on_one_thread(
    ato: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redaction, validation and the guardrails are CPU work: they must not hold the
    worker's loop (ingestion, the other calls' sends), and they run on the one brief CPU
    thread (several threads would take the GIL from the loop in turn)."""
    import streamproc.llm.briefer as briefer_module

    threads: dict[str, set[str]] = {}
    redact, merge = Redactor.redact, briefer_module.merge

    def seen(step: str) -> None:
        threads.setdefault(step, set()).add(threading.current_thread().name)

    def spy_redact(self: Redactor, kinds: Any, **kwargs: Any) -> Any:
        seen("redaction")
        return redact(self, kinds, **kwargs)

    def spy_merge(*args: Any) -> Any:
        seen("guardrails")
        return merge(*args)

    monkeypatch.setattr(Redactor, "redact", spy_redact)
    monkeypatch.setattr(briefer_module, "merge", spy_merge)
    loop_thread = threading.current_thread().name  # asyncio.run runs its loop here
    out, _ = brief_with(ato, ["ok"])
    assert out.brief.generation.method == "LLM"
    assert set(threads) == {"redaction", "guardrails"}
    names = set().union(*threads.values())
    assert len(names) == 1 and loop_thread not in names, threads
    assert names.pop().startswith("brief-cpu")


def test_the_cpu_steps_of_many_briefs_hand_the_loop_a_turn_between_each_two() -> None:
    """A burst of answers means a burst of guardrails. Queued back to back on the CPU
    thread, they would keep the GIL from the loop (the other calls' sends, ingestion)
    for the whole burst; each step must be handed over through the loop instead, so the
    loop runs between any two steps."""
    from streamproc.llm.briefer import _cpu

    ticks = 0
    marks: list[tuple[int, int]] = []  # the loop's tick count as each step starts and ends

    def step() -> None:
        start = ticks
        until = time.process_time() + 0.003  # pure CPU, holding the GIL
        while time.process_time() < until:
            pass
        marks.append((start, ticks))

    async def main() -> None:
        nonlocal ticks

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        beat = asyncio.create_task(ticker())
        await asyncio.gather(*(_cpu(step) for _ in range(12)))
        beat.cancel()

    asyncio.run(main())
    assert len(marks) == 12
    gaps = [later[0] - earlier[1] for earlier, later in itertools.pairwise(marks)]
    assert all(g >= 1 for g in gaps), gaps  # the loop ran between every two steps


def test_a_cpu_step_logs_with_the_case_and_brief_ids_of_its_brief() -> None:
    """The guardrails log on the CPU thread: their records must carry the case's
    correlation ids as the loop's do (an executor does not carry context by itself)."""
    from streamproc.llm.briefer import _cpu
    from streamproc.ops.logs import bind, bound

    async def main() -> dict[str, Any]:
        with bind(case_id="case-1", brief_id="b-1"):
            return await _cpu(bound)

    assert asyncio.run(main()) == {"case_id": "case-1", "brief_id": "b-1"}
