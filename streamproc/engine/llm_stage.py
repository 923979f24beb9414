"""The LLM stage: due cases briefed by the model without ever holding up ingestion.

The agent hands a due case's plan (with its deterministic brief) to `offer`. When a
slot is free a task briefs it; otherwise the case stays pending and is offered again
after the next batch (backpressure, visible as streamproc_llm_queue_depth). The
case's pending entry is removed only once its brief is delivered, so a crash mid-call
re-briefs it; answers are kept in the `llm_cache` table (content hash, prompt
version, model), so a restart or replay reuses them instead of paying again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from streamproc.brief.model import Method
from streamproc.brief.prompt import load_template
from streamproc.config import LLMProvider, Settings
from streamproc.contracts.codec import AvroCodec
from streamproc.contracts.schemas import SchemaSet
from streamproc.engine.dlq import Outgoing
from streamproc.engine.processor import BriefPlan
from streamproc.engine.state import WriteBackTable
from streamproc.llm.briefer import BriefOutcome, LLMBriefer, fallback_brief
from streamproc.llm.client import Budget, CircuitBreaker, CircuitState, LLMClient, RetryPolicy
from streamproc.llm.prices import configured_price
from streamproc.llm.providers import provider_for
from streamproc.ops.logs import bind
from streamproc.ops.metrics import Metrics
from streamproc.privacy.redact import Redactor

log = logging.getLogger(__name__)
CIRCUIT_VALUE = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}
# Rounds a case may fail on the model path (its brief cannot be encoded or its answer
# stored) before the deterministic brief goes out instead, with reason stage_error.
# A failure to deliver (the broker is away) is not the model's: the case waits for it.
MAX_STAGE_FAILURES = 3
SHADOW_MAX_IN_FLIGHT = 64  # shadow briefs under way; past it a case gets none (counted)


class LLMStage:
    def __init__(
        self,
        settings: Settings,
        codec: AvroCodec,
        metrics: Metrics,
        briefer: LLMBriefer,
        cache: WriteBackTable,
        publish: Callable[[BriefPlan], Awaitable[None]],
        send: Callable[[Outgoing], Awaitable[None]],
        persist: Callable[[], Awaitable[None]],
        *,
        canary: LLMBriefer | None = None,
        shadow: LLMBriefer | None = None,
    ) -> None:
        self.s, self.codec, self.metrics, self.briefer = settings, codec, metrics, briefer
        self.canary, self.shadow = canary, shadow
        # Each variant's own settings: its case deadline, its model's price.
        self.variant_settings = {"primary": settings, **variant_settings(settings)}
        self.prices = {n: configured_price(v) for n, v in self.variant_settings.items()}
        metrics.llm_cost_estimated.set(0 if None in self.prices.values() else 1)
        self.shadow_tasks: set[asyncio.Task[None]] = set()
        self.cache, self.publish, self.send, self.persist = cache, publish, send, persist
        self.in_flight: dict[str, asyncio.Task[None]] = {}
        self.partition_of: dict[str, int] = {}
        self.failures: dict[str, int] = {}  # failed rounds of a case, until it is published
        self.waiting = 0

    def offer(self, plan: BriefPlan) -> None:
        """Start briefing `plan` if a slot is free; otherwise it waits as a pending case."""
        if plan.case_id in self.in_flight:
            return
        if len(self.in_flight) >= self.s.llm_max_concurrency:
            self.waiting += 1
            return
        task = asyncio.create_task(self._brief(plan), name=f"llm-brief-{plan.case_id}")
        self.in_flight[plan.case_id] = task
        self.partition_of[plan.case_id] = plan.partition
        task.add_done_callback(lambda _t: self._done(plan.case_id))

    def _done(self, case_id: str) -> None:
        self.in_flight.pop(case_id, None)
        self.partition_of.pop(case_id, None)

    def briefer_for(self, case_id: str) -> LLMBriefer:
        """The canary for LLM_CANARY_SHARE of the cases (by a stable hash), else the primary."""
        if self.canary is not None and in_canary(case_id, self.s.llm_canary_share):
            return self.canary
        return self.briefer

    def hand_back(self, partitions: set[int]) -> int:
        """Cancel model calls for cases of `partitions` (revoked in a rebalance). Their pending
        entries stay in the table, so the partition's next owner briefs them."""
        cancelled = 0
        for case_id, task in list(self.in_flight.items()):
            if self.partition_of.get(case_id) in partitions:
                task.cancel()
                self.failures.pop(case_id, None)  # the next owner counts afresh
                cancelled += 1
        return cancelled

    async def drain(self, grace_s: float) -> tuple[int, int]:
        """At shutdown: let in-flight cases finish for up to `grace_s`, then hand the rest
        back (cancelled; still pending, so the next owner briefs them).
        Returns (finished, handed back)."""
        for shadow in self.shadow_tasks:  # best effort, never waited for
            shadow.cancel()
        tasks = set(self.in_flight.values())
        if not tasks:
            return 0, 0
        done, still = await asyncio.wait(tasks, timeout=grace_s)
        for task in still:
            task.cancel()
        if still:
            await asyncio.wait(still, timeout=1.0)
        return len(done), len(still)

    def end_round(self) -> None:
        """After the agent offered the due cases of a batch: how many had to wait."""
        self.metrics.llm_queue.set(self.waiting)
        self.waiting = 0

    def observe(self) -> None:
        """Gauges the timer refreshes, so an idle worker still reports them."""
        self.metrics.llm_in_flight.set(len(self.in_flight))
        self.metrics.llm_circuit.set(CIRCUIT_VALUE[self.briefer.client.breaker.state])
        budget = self.briefer.client.budget
        budget.check_day_rollover()
        self.metrics.llm_budget_tokens.set(budget.tokens_per_day)
        self.metrics.llm_budget_spent.set(budget.spent)

    def cache_key(self, plan: BriefPlan, briefer: LLMBriefer | None = None) -> str:
        briefer = briefer or self.briefer
        version, model = briefer.template.version, briefer.client.model
        return f"{plan.case.content_hash()}:{version}:{model}"

    async def _brief(self, plan: BriefPlan) -> None:
        with bind(case_id=plan.case_id, brief_id=plan.brief.brief_id):
            await self._brief_bound(plan)

    async def _brief_bound(self, plan: BriefPlan) -> None:
        briefer = self.briefer_for(plan.case_id)
        key = self.cache_key(plan, briefer)
        cached = self.cache.get(key)
        if self.failures.get(plan.case_id, 0) >= MAX_STAGE_FAILURES:
            outcome = self._fallback(plan, "stage_error", briefer)  # the model path keeps failing
        else:
            outcome = await self._outcome(plan, cached, briefer)
        self._count(outcome, cached is not None)
        gen = outcome.brief.generation
        if gen.method is Method.FALLBACK:
            log.warning(
                "model brief fell back to the deterministic brief",
                extra={"fallback_reason": gen.fallback_reason},
            )
        delivering = False  # failures before delivery are the model path's own, and bounded
        try:
            published = plan.with_brief(outcome.brief, self.codec, self.s.topics.briefs)
            if outcome.draft is not None and cached is None:
                # Stored before the brief goes out: a crash after this point re-briefs the
                # case from the stored answer instead of paying for a second call.
                self.cache.partition = plan.partition
                self.cache[key] = outcome.draft
                await self.persist()
            delivering = True
            await self.publish(published)
            if outcome.audit is not None:
                await self.send(self._audit_record(plan, outcome.audit))
            await self.persist()
            self._start_shadow(plan)
        except Exception:  # stays pending: the next round offers it again
            if not delivering:
                self.failures[plan.case_id] = self.failures.get(plan.case_id, 0) + 1
            log.exception(
                "publishing an LLM brief failed; the case stays pending",
                extra={"stage_failures": self.failures.get(plan.case_id, 0)},
            )
        else:
            self.failures.pop(plan.case_id, None)

    async def _outcome(
        self, plan: BriefPlan, cached: dict[str, Any] | None, briefer: LLMBriefer
    ) -> BriefOutcome:
        """The model's brief, or the deterministic one with the reason; never raises."""
        deadline = self.variant_settings[briefer.variant].llm_case_deadline_s
        try:
            return await asyncio.wait_for(briefer.brief(plan.case, plan.brief, cached), deadline)
        except TimeoutError:
            return self._fallback(plan, "timeout", briefer)
        except Exception:  # a bug must not cost the case its brief
            log.exception("LLM briefing failed unexpectedly; publishing the deterministic brief")
            return self._fallback(plan, "provider_error", briefer)

    def _fallback(self, plan: BriefPlan, reason: str, briefer: LLMBriefer) -> BriefOutcome:
        fields = briefer.generation_fields(plan.brief)
        return BriefOutcome(fallback_brief(plan.brief, reason, fields), None, None)

    # -- the shadow variant: the same cases, to the shadow topic only ---------------------

    def _start_shadow(self, plan: BriefPlan) -> None:
        if self.shadow is None:
            return
        if len(self.shadow_tasks) >= SHADOW_MAX_IN_FLIGHT:  # never a growing backlog
            self.metrics.shadow_skipped.inc()
            return
        task = asyncio.create_task(self._shadow_brief(plan), name=f"shadow-{plan.case_id}")
        self.shadow_tasks.add(task)
        task.add_done_callback(self.shadow_tasks.discard)

    async def _shadow_brief(self, plan: BriefPlan) -> None:
        """Brief the case with the shadow variant and publish it to the shadow topic (and
        its audit record): never to analysts, no state changed, nothing retried."""
        assert self.shadow is not None
        with bind(case_id=plan.case_id, brief_id=plan.brief.brief_id):
            outcome = await self._outcome(plan, None, self.shadow)
            self._count(outcome, False)
            try:
                shadow = plan.with_brief(outcome.brief, self.codec, self.s.topics.shadow_briefs)
                await self.send(shadow.output)
                if outcome.audit is not None:
                    await self.send(self._audit_record(plan, outcome.audit))
            except Exception:
                log.exception("a shadow brief was not published")
                return
            self.metrics.shadow_briefs.labels(outcome.brief.generation.method.value).inc()

    def _audit_record(self, plan: BriefPlan, audit: dict[str, Any]) -> Outgoing:
        return Outgoing(
            self.s.topics.audit,
            plan.case_id.encode(),
            json.dumps(audit).encode(),
            [("brief_id", plan.brief.brief_id.encode())],
        )

    def _count(self, outcome: BriefOutcome, cache_hit: bool) -> None:
        m, gen = self.metrics, outcome.brief.generation
        if cache_hit:
            m.llm_cache_hits.inc()
        if gen.method is Method.FALLBACK:
            m.llm_fallbacks.labels(gen.fallback_reason or "unknown", gen.variant).inc()
            if outcome.audit is not None:
                m.llm_errors.labels(gen.fallback_reason or "unknown", gen.variant).inc()
        audit: dict[str, Any] = outcome.audit or {}
        if audit:
            m.llm_duration.labels(
                gen.provider or "",
                gen.model or "",
                "ok" if gen.method is Method.LLM else "fallback",
            ).observe(audit.get("latency_ms", 0) / 1000)
            prompt, completion = audit.get("prompt_tokens", 0), audit.get("completion_tokens", 0)
            m.llm_tokens.labels("prompt", gen.variant).inc(prompt)
            m.llm_tokens.labels("completion", gen.variant).inc(completion)
            price = self.prices.get(gen.variant)
            m.llm_cost.labels(gen.variant).inc(price.cost(prompt, completion) if price else 0.0)
            m.llm_retries.inc(audit.get("retries", 0))
        for check, n in outcome.violations.items():
            m.guardrail_violations.labels(check).inc(n)
        if not cache_hit:
            for entity, n in outcome.redactions.items():
                m.pii_redactions.labels(entity).inc(n)


def llm_stage(
    settings: Settings,
    codec: AvroCodec,
    metrics: Metrics,
    cache: WriteBackTable,
    publish: Callable[[BriefPlan], Awaitable[None]],
    send: Callable[[Outgoing], Awaitable[None]],
    persist: Callable[[], Awaitable[None]],
) -> LLMStage | None:
    """The LLM stage when a provider is configured; None for deterministic briefs only."""
    if settings.llm_provider is LLMProvider.NONE:
        return None
    briefer = make_briefer(settings, codec.schemas)
    variants = {
        name: make_briefer(variant, codec.schemas, variant=name)
        for name, variant in variant_settings(settings).items()
    }
    return LLMStage(settings, codec, metrics, briefer, cache, publish, send, persist, **variants)


def variant_settings(settings: Settings) -> dict[str, Settings]:
    """The configured canary and shadow, each as whole settings of its own."""
    named = (("canary", settings.llm_canary), ("shadow", settings.llm_shadow))
    return {name: settings.for_variant(v) for name, v in named if v is not None}


def in_canary(case_id: str, share: float) -> bool:
    """Is the case among the canary's `share`? A stable hash of case_id decides, so a case
    (and each of its versions) always goes the same way, on every worker."""
    digest = hashlib.sha256(case_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def make_briefer(settings: Settings, schemas: SchemaSet, variant: str = "primary") -> LLMBriefer:
    """The model briefer the settings describe (ConfigError when they are incomplete)."""
    base_url, model = settings.llm_endpoint()
    client = LLMClient(
        provider_for(
            settings.llm_provider.value,
            dialect=settings.llm_dialect,
            temperature=settings.llm_temperature,
        ),
        base_url,
        model,
        api_key=settings.llm_api_key_value(),
        timeout_s=settings.llm_timeout_s,
        max_concurrency=settings.llm_max_concurrency,
        retry=RetryPolicy(
            max_retries=settings.llm_max_retries, retry_after_cap_s=settings.llm_retry_after_cap_s
        ),
        breaker=CircuitBreaker(settings.llm_breaker_threshold, settings.llm_breaker_reset_s),
        budget=Budget(
            settings.llm_requests_per_minute,
            settings.llm_tokens_per_minute,
            settings.llm_daily_token_budget,
            wait_cap_s=settings.llm_retry_after_cap_s,
        ),
    )
    return LLMBriefer(
        client,
        load_template(settings.llm_prompt_version),
        Redactor.for_inputs(schemas, settings.topics),
        policy=settings.brief_pii,
        max_prompt_tokens=settings.llm_max_prompt_tokens,
        max_output_tokens=settings.llm_max_output_tokens,
        variant=variant,
    )
