"""The model call under dynamics: a provider that hangs instead of failing, a probe that
is cancelled, a case deadline that runs out mid-call. Against a real loopback stand-in
that hangs (it accepts the request and never answers)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
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
        settings = Settings(
            llm_provider="openai", llm_model="m-1", llm_max_concurrency=1,
            llm_queue_max_wait_s=0.3,
        )  # fmt: skip
        async with _stage(server, settings, published) as (stage, client):
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
            # One of the four waited for the slot itself, under way: it sent nothing.
            assert len(server.requests) == 1 and client.in_flight == 1

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


@contextlib.asynccontextmanager
async def _stage(
    server: StubLLM, settings: Settings, published: list[BriefPlan]
) -> AsyncIterator[tuple[LLMStage, LLMClient]]:
    """A stage on `server` built as the worker builds it (a model slot per
    LLM_MAX_CONCURRENCY); on the way out: drained, its client closed, `server` stopped."""

    async def publish(plan: BriefPlan) -> None:
        published.append(plan)

    async def nothing(*_: Any) -> None:
        return None

    client = LLMClient(
        provider_for("openai"), f"{server.url}/v1", "m-1", timeout_s=30,
        max_concurrency=settings.llm_max_concurrency,
    )  # fmt: skip
    stage = LLMStage(
        settings, AvroCodec(SchemaSet()), Metrics(CollectorRegistry()),
        masked_briefer(client), Table(), publish, nothing, nothing,
    )  # fmt: skip
    try:
        yield stage, client
    finally:
        await stage.drain(0.1)
        await client.aclose()
        await server.stop()


async def _until(done: Any, timeout_s: float = 10.0) -> None:
    until = time.monotonic() + timeout_s
    while not done() and time.monotonic() < until:
        await asyncio.sleep(0.02)


def test_a_model_slot_is_held_only_while_the_call_is_with_the_provider(
    monkeypatch: Any,
) -> None:
    """One model slot, two cases, slow guardrails: while the first case's answer is being
    checked, the second case's call must already be with the provider. Holding the slot
    from redaction to the written brief (as the stage did) leaves the provider idle for
    every case's guardrails and writes, and the paid-for concurrency unused."""
    import streamproc.llm.briefer as briefer_module

    seen_at_provider: list[int] = []
    merge = briefer_module.merge

    async def main() -> None:
        server = StubLLM(delay_s=0.3)
        await server.start()

        def slow_merge(*args: Any) -> Any:
            # Guardrails of a large case on a slow machine: 0.4 s, looking meanwhile how
            # many calls the provider has (the stub answers on the test's loop).
            seen, until = 0, time.monotonic() + 0.4
            while time.monotonic() < until:
                seen = max(seen, server.concurrent)
                time.sleep(0.01)
            seen_at_provider.append(seen)
            return merge(*args)

        monkeypatch.setattr(briefer_module, "merge", slow_merge)
        published: list[BriefPlan] = []
        settings = Settings(llm_provider="openai", llm_model="m-1", llm_max_concurrency=1)
        async with _stage(server, settings, published) as (stage, _):
            for plan in _plans(2):
                stage.offer(plan)
            await _until(lambda: len(published) == 2)
            assert [p.brief.generation.method for p in published] == ["LLM", "LLM"]
            assert server.max_concurrent == 1  # never more than the one slot
            # While the first case's answer was checked, the second's call was out.
            assert seen_at_provider[0] == 1, seen_at_provider

    asyncio.run(main())


def test_the_case_deadline_counts_from_the_model_slot_not_the_wait_for_it() -> None:
    """One slot, a deadline shorter than two calls: the second case waits a whole call
    for the slot (the queue's wait, bounded by LLM_QUEUE_MAX_WAIT_S), then has its full
    deadline with the model. Counting the wait against the deadline would time it out."""

    async def main() -> None:
        server = StubLLM(delay_s=0.35)
        await server.start()
        published: list[BriefPlan] = []
        settings = Settings(
            llm_provider="openai", llm_model="m-1", llm_max_concurrency=1,
            llm_case_deadline_s=0.5, llm_queue_max_wait_s=5,
        )  # fmt: skip
        async with _stage(server, settings, published) as (stage, _):
            for plan in _plans(2):
                stage.offer(plan)
            await _until(lambda: len(published) == 2)
            gens = [p.brief.generation for p in published]
            assert [g.method for g in gens] == ["LLM", "LLM"], [g.fallback_reason for g in gens]
            assert all((g.latency_ms or 0) < 500 for g in gens)  # the model's time, not the wait

    asyncio.run(main())


def test_a_repair_after_a_wait_for_the_slot_keeps_its_whole_deadline() -> None:
    """The second of two cases on one slot waits a call for it, gets an answer that is
    not JSON (the client's own output error), and is repaired: the wait must count
    neither against its deadline (0.5 s; wait 0.35 + call 0.35 + repair 0.1) nor in the
    model latency it reports (the review found both for the client's output errors)."""

    async def main() -> None:
        delays = iter([0.35, 0.35, 0.1])
        server = StubLLM(delay_fn=lambda: next(delays))
        await server.start()
        server.script = ["ok", "nonjson", "ok"]
        client = LLMClient(
            provider_for("openai"), f"{server.url}/v1", "m-1", timeout_s=30, max_concurrency=1
        )
        briefer = masked_briefer(client)
        first, second = _plans(2)
        now = time.monotonic()
        try:
            _, out = await asyncio.gather(
                briefer.brief(first.case, first.brief, None, now + 0.5, now + 5),
                briefer.brief(second.case, second.brief, None, now + 0.5, now + 5),
            )
        finally:
            await client.aclose()
            await server.stop()
        gen, audit = out.brief.generation, out.audit or {}
        assert gen.method == "LLM" and audit["validation"] == "repaired", gen.fallback_reason
        assert audit["slot_wait_ms"] >= 300  # it did wait for the slot
        assert audit["latency_ms"] < audit["slot_wait_ms"] + 450

    asyncio.run(main())


def test_a_shadow_brief_waits_for_its_own_slot_from_its_own_start() -> None:
    """The shadow briefs a case after its brief is out: its wait for a slot counts from
    then, not from when the primary's case was offered (the review found a shadow that
    fell back at once, its queue wait spent by the primary's whole brief)."""

    async def main() -> None:
        primary, shadow_server = StubLLM(delay_s=0.35), StubLLM(delay_s=0.05)
        await primary.start()
        await shadow_server.start()
        settings = Settings(
            llm_provider="openai", llm_model="m-1", llm_max_concurrency=2,
            llm_queue_max_wait_s=0.3,
        )  # fmt: skip
        published: list[BriefPlan] = []
        async with _stage(primary, settings, published) as (stage, _):
            shadow_client = LLMClient(
                provider_for("openai"), f"{shadow_server.url}/v1", "m-1", timeout_s=30,
                max_concurrency=1,
            )  # fmt: skip
            shadow = masked_briefer(shadow_client)
            shadow.variant = "shadow"
            stage.shadow = shadow
            stage.variant_settings["shadow"] = settings
            try:
                for plan in _plans(2):
                    stage.offer(plan)
                await _until(lambda: len(published) == 2 and len(shadow_server.requests) == 2)
                await _until(lambda: not stage.shadow_tasks)
                assert len(shadow_server.requests) == 2  # both shadow briefs asked the model
            finally:
                await shadow_client.aclose()
                await shadow_server.stop()

    asyncio.run(main())


def test_calls_waiting_for_a_slot_when_the_circuit_opens_are_not_sent() -> None:
    """Four slots, eight cases, a provider failing every call, a breaker that opens at
    the first failure: the four cases waiting for a slot meanwhile must be refused by
    the open circuit when their slot frees, not sent (the review found them sent)."""

    async def main() -> None:
        server = StubLLM(delay_s=0.1)
        await server.start()
        server.default = "500"
        settings = Settings(
            llm_provider="openai", llm_model="m-1", llm_max_concurrency=4,
            llm_queue_max_wait_s=10,
        )  # fmt: skip
        published: list[BriefPlan] = []
        async with _stage(server, settings, published) as (stage, client):
            client.retry = RetryPolicy(max_retries=0)
            client.breaker = CircuitBreaker(threshold=1, reset_after_s=60)
            for plan in _plans(8):
                stage.offer(plan)
            await _until(lambda: len(published) == 8)
            reasons = sorted(str(p.brief.generation.fallback_reason) for p in published)
            assert len(server.requests) == 4, reasons
            assert reasons.count("circuit_open") == 4, reasons

    asyncio.run(main())


def test_a_revocation_hands_back_the_cases_still_waiting_for_a_slot() -> None:
    """One slot, two cases under way: at a revocation, the one waiting for the slot goes
    back to pending like a queued case. It must not take the slot during the rebalance
    and pay for a call its partition's next owner makes again."""

    class Owner:
        def __init__(self) -> None:
            self.is_serving, self.owned = True, {0}

        def serving(self) -> bool:
            return self.is_serving

        def owns(self, partition: int) -> bool:
            return partition in self.owned

    async def main() -> None:
        server = StubLLM(delay_s=0.3)
        await server.start()
        settings = Settings(llm_provider="openai", llm_model="m-1", llm_max_concurrency=1)
        published: list[BriefPlan] = []
        async with _stage(server, settings, published) as (stage, _):
            owner = Owner()
            stage.owner = owner
            for plan in _plans(2):
                stage.offer(plan)
            await _until(lambda: len(server.requests) == 1)
            owner.is_serving, owner.owned = False, set()  # the rebalance: all revoked
            assert stage.hand_back({0}) == 1  # the case waiting for the slot
            await asyncio.sleep(0.6)  # the rebalance takes a while
            assert len(server.requests) == 1  # no call paid for during it
            assert stage.keep_only(set()) == 1  # the call in flight is abandoned

    asyncio.run(main())


def test_a_case_handed_back_before_its_call_is_counted_afresh_by_its_next_briefing() -> None:
    """A case with failed rounds, handed back while it waits for the slot: its count
    goes with it (keep_only, which clears the counts of calls it cancels, never sees it),
    or its next round would go out as stage_error (the second review found it kept)."""

    async def main() -> None:
        server = StubLLM(delay_s=0.3)
        await server.start()
        settings = Settings(llm_provider="openai", llm_model="m-1", llm_max_concurrency=1)
        async with _stage(server, settings, []) as (stage, _):
            first, second = _plans(2)
            stage.failures[first.case_id] = stage.failures[second.case_id] = 2
            stage.offer(first)
            stage.offer(second)
            await _until(lambda: len(server.requests) == 1)
            stage.hand_back({0})
            await asyncio.sleep(0.05)
            stage.keep_only(set())
            assert stage.failures == {}

    asyncio.run(main())


def test_a_case_handed_back_as_its_brief_ends_without_a_call_is_not_published(
    monkeypatch: Any,
) -> None:
    """Shutdown lands just as a case's brief ends without a call (the circuit is open):
    wait_for hands back the finished result and drops the cancel. The case must still go
    back to pending, unwritten, as drain reports it (the second review saw it published)."""
    import streamproc.llm.briefer as briefer_module

    async def main() -> None:
        server = StubLLM()
        await server.start()
        published: list[BriefPlan] = []
        settings = Settings(llm_provider="openai", llm_model="m-1", llm_max_concurrency=1)
        async with _stage(server, settings, published) as (stage, client):
            client.breaker.failures, client.breaker.opened_at = 99, time.monotonic()
            fallback, drains = briefer_module.fallback_brief, []

            def at_the_end(*args: Any, **kwargs: Any) -> Any:
                if not drains:  # SIGTERM now, in the brief's last step
                    drains.append(asyncio.ensure_future(stage.drain(0.5)))
                return fallback(*args, **kwargs)

            monkeypatch.setattr(briefer_module, "fallback_brief", at_the_end)
            stage.offer(_plans(1)[0])
            await _until(lambda: bool(drains) and drains[0].done(), 5)
            assert drains[0].result() == (0, 1)  # handed back
            assert published == []

    asyncio.run(main())
