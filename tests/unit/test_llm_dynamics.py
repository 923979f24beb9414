"""The model call under dynamics: a provider that hangs instead of failing, a probe that
is cancelled, a case deadline that runs out mid-call. Against a real loopback stand-in
that hangs (it accepts the request and never answers)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from prometheus_client import CollectorRegistry

from streamproc.brief.fallback import build_brief
from streamproc.config import Settings
from streamproc.contracts.codec import AvroCodec
from streamproc.contracts.schemas import SchemaSet
from streamproc.engine.dlq import Outgoing
from streamproc.engine.llm_stage import LLMStage
from streamproc.engine.processor import BriefPlan
from streamproc.llm.client import CircuitBreaker, CircuitState, LLMClient, RetryPolicy
from streamproc.llm.providers import provider_for
from streamproc.ops.metrics import Metrics
from streamproc.sim.scenario import build_scenario
from tests.conftest import NOW_MS
from tests.llm_stub import StubLLM, masked_briefer
from tests.unit.test_case_and_brief import build_cases
from tests.unit.test_llm_client import REQ, Clock

TIMEOUT_S, DEADLINE_S = 0.2, 0.6  # the defaults (20 s, 60 s) at 1:100


class Table(dict[str, Any]):
    partition = 0


def _plans(n: int) -> list[BriefPlan]:
    schemas = SchemaSet()
    case = build_cases(schemas, build_scenario(seed=7, now_ms=NOW_MS))["case-ct-001"]
    plans = []
    for i in range(n):
        floor = build_brief(case, version=1, generated_at_ms=NOW_MS)
        out = Outgoing("fraud.case-briefs.v1", b"k", b"v", [])
        plans.append(BriefPlan(f"{case.case_id}-{i}", floor, out, 0.0, 0, case))
    return plans


def test_a_hung_provider_opens_the_breaker_before_the_case_deadline_cancels_it() -> None:
    """4 attempts x 20 s outlast the 60 s case deadline: each hung case must still count
    as a failed call, so 5 of them open the circuit and the 6th is not sent at all."""

    async def main() -> None:
        server = StubLLM()
        await server.start()
        server.default = "hang"
        published: list[BriefPlan] = []
        audits: list[Outgoing] = []

        async def publish(plan: BriefPlan) -> None:
            published.append(plan)

        async def send(out: Outgoing) -> None:
            audits.append(out)

        async def persist() -> None:
            return None

        client = LLMClient(
            provider_for("openai"),
            f"{server.url}/v1",
            "m-1",
            timeout_s=TIMEOUT_S,
            retry=RetryPolicy(max_retries=3, base_s=0.01, cap_s=0.02),
            breaker=CircuitBreaker(threshold=5, reset_after_s=60),
        )
        settings = Settings(llm_provider="openai", llm_model="m-1", llm_case_deadline_s=DEADLINE_S)
        stage = LLMStage(
            settings, AvroCodec(SchemaSet()), Metrics(CollectorRegistry()),
            masked_briefer(client), Table(), publish, send, persist,
        )  # fmt: skip
        try:
            for plan in _plans(5):
                await stage._brief(plan)
            assert client.breaker.failures >= 5, client.breaker.failures
            assert client.breaker.state is CircuitState.OPEN
            sent = len(server.requests)
            [sixth] = _plans(1)
            await stage._brief(sixth)
            assert len(server.requests) == sent  # refused without a request
            reasons = [p.brief.generation.fallback_reason for p in published]
            assert reasons == ["timeout"] * 5 + ["circuit_open"], reasons
            audited = [json.loads(a.value or b"{}") for a in audits]  # every case audited
            assert [a["fallback_reason"] for a in audited] == reasons
            assert all(a["error"] == "LLMTimeout" for a in audited[:5])
        finally:
            await client.aclose()
            await server.stop()

    asyncio.run(main())


def test_a_cancelled_half_open_probe_lets_the_next_probe_through() -> None:
    clock = Clock()

    async def main() -> None:
        server = StubLLM()
        await server.start()
        server.default = "hang"
        breaker = CircuitBreaker(threshold=1, reset_after_s=10, clock=clock)
        client = LLMClient(
            provider_for("openai"), f"{server.url}/v1", "m-1", timeout_s=30, breaker=breaker
        )
        try:
            breaker.failure()
            clock.now += 10
            assert breaker.state is CircuitState.HALF_OPEN
            probe = asyncio.create_task(client.complete(REQ))
            while not server.requests:
                await asyncio.sleep(0.01)
            probe.cancel()  # a rebalance hands the case back while the probe is in flight
            await asyncio.gather(probe, return_exceptions=True)
            assert breaker.allow(), "a cancelled probe left the circuit refusing every call"
        finally:
            await client.aclose()
            await server.stop()

    asyncio.run(main())


def test_the_audit_record_is_delivered_before_the_brief_and_survives_a_failed_send() -> None:
    """A model call that was paid for is audited even when the audit's first send fails:
    the brief waits for its audit record, and a retry sends it again."""

    async def main() -> None:
        server = StubLLM()
        await server.start()
        events: list[str] = []
        failures = [True]

        async def publish(plan: BriefPlan) -> None:
            events.append(f"brief {plan.brief.generation.method.value}")

        async def send(out: Outgoing) -> None:
            if failures and failures.pop():
                raise RuntimeError("broker away")
            events.append("audit")

        async def persist() -> None:
            return None

        client = LLMClient(provider_for("openai"), f"{server.url}/v1", "m-1", timeout_s=5)
        stage = LLMStage(
            Settings(llm_provider="openai", llm_model="m-1"), AvroCodec(SchemaSet()),
            Metrics(CollectorRegistry()), masked_briefer(client), Table(), publish, send,
            persist,
        )  # fmt: skip
        try:
            [plan] = _plans(1)
            await stage._brief(plan)  # the audit's send fails: nothing is published yet
            assert events == []
            await stage._brief(plan)  # the next round: from the stored answer, audited
            assert events == ["audit", "brief LLM"], events
            assert len(server.requests) == 1  # the answer was not paid for twice
        finally:
            await client.aclose()
            await server.stop()

    asyncio.run(main())


def test_cases_waiting_for_a_model_slot_fall_back_after_the_queue_wait() -> None:
    """A slow model: one slot, five due cases. The four that wait for the slot must not
    wait for ever (nor be re-planned on every sub-batch): past the queue's longest wait
    their deterministic briefs go out, marked so."""

    async def main() -> None:
        server = StubLLM()
        await server.start()
        server.default = "hang"
        published: list[BriefPlan] = []

        async def publish(plan: BriefPlan) -> None:
            published.append(plan)

        async def nothing(*_: Any) -> None:
            return None

        client = LLMClient(provider_for("openai"), f"{server.url}/v1", "m-1", timeout_s=30)
        settings = Settings(
            llm_provider="openai", llm_model="m-1", llm_max_concurrency=1,
            llm_queue_max_wait_s=0.3,
        )  # fmt: skip
        stage = LLMStage(
            settings, AvroCodec(SchemaSet()), Metrics(CollectorRegistry()),
            masked_briefer(client), Table(), publish, nothing, nothing,
        )  # fmt: skip
        try:
            plans = _plans(5)
            for _ in range(3):  # three sub-batches find the same five cases due
                for plan in plans:
                    if not stage.busy(plan.case_id):
                        stage.offer(plan)
                stage.end_round()
            assert len(server.requests) <= 1
            await asyncio.sleep(0.5)
            stage.observe()  # the worker's timer
            await asyncio.sleep(0.1)
            reasons = sorted(str(p.brief.generation.fallback_reason) for p in published)
            assert reasons == ["queue_timeout"] * 4, reasons
        finally:
            await stage.drain(0.1)
            await client.aclose()
            await server.stop()

    asyncio.run(main())


def test_a_stored_answer_goes_with_its_brief_and_leftovers_are_swept() -> None:
    """llm_cache must not grow with uptime: an answer is deleted once its case's brief is
    out, and one that outlived its case (handed back, never published here) is swept
    after CASE_RETAIN_H on the partitions this worker owns."""

    async def main() -> None:
        server = StubLLM()
        await server.start()
        now = [1_000_000.0]

        async def nothing(*_: Any) -> None:
            return None

        client = LLMClient(provider_for("openai"), f"{server.url}/v1", "m-1", timeout_s=5)
        cache = Table()
        settings = Settings(llm_provider="openai", llm_model="m-1", case_retain_h=1)
        stage = LLMStage(
            settings, AvroCodec(SchemaSet()), Metrics(CollectorRegistry()),
            masked_briefer(client), cache, nothing, nothing, nothing, clock=lambda: now[0],
        )  # fmt: skip
        try:
            for plan in _plans(3):
                await stage._brief(plan)
            assert len(server.requests) == 3 and dict(cache) == {}  # each went with its brief
            cache["left-over"] = {"draft": {}, "at": now[0], "p": 0}  # a handed-back case's
            cache["recent"] = {"draft": {}, "at": now[0] + 3000, "p": 0}
            now[0] += 3600 + 1
            assert stage.sweep_cache() == 1 and list(cache) == ["recent"]
        finally:
            await client.aclose()
            await server.stop()

    asyncio.run(main())
