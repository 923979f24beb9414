"""The LLM stage: due cases briefed by the model without ever holding up ingestion.

The worker hands a due case's plan (with its deterministic brief) to `offer`. A task
briefs it when fewer than CASES_PER_MODEL_SLOT x LLM_MAX_CONCURRENCY cases are under way;
otherwise the plan waits in the stage's queue, in the order it came. A model slot (one
of LLM_MAX_CONCURRENCY calls in flight, the client's) is held only while the call is
with the provider: the case's redaction and prompt are ready before its slot comes
free, and its guardrails and writes run after the slot has gone to the next case. A case
that has waited LLM_QUEUE_MAX_WAIT_S since it was offered, in the queue or for a slot,
goes out as its deterministic brief (fallback_reason queue_timeout): a slow model never
holds a case for ever, and a waiting case is not planned again on every sub-batch
(`busy`). The queue's depth is streamproc_llm_queue_depth.

What a model call produces is written in this order: its audit record (a call that was
paid for is always audited; a failed send keeps the outcome for the next round), its
answer into the `llm_cache` table (a crash after that re-briefs from the stored answer
instead of paying again), the brief, then the case's state. The stored answer is deleted
with the case's state once the brief is out; one that outlives its case (handed back,
never published) is swept after CASE_RETAIN_H.

Rebalances: a call in flight is not cancelled when its partitions are revoked (with
aiokafka every rebalance revokes every partition). It finishes, then waits until the
worker serves again; if the worker kept the partition the answer is used, otherwise the
call is abandoned (streamproc_llm_calls_abandoned_total) and the partition's new owner
briefs the case. Calls for partitions the new assignment does not give back are
cancelled as soon as it is known. Nothing is written while the worker is rebalancing or
restoring state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from streamproc.brief.guardrails import split_claims
from streamproc.brief.model import Method
from streamproc.config import LLMProvider, Settings
from streamproc.contracts.codec import AvroCodec
from streamproc.engine.dlq import Outgoing
from streamproc.engine.processor import BriefPlan
from streamproc.engine.state import WriteBackTable
from streamproc.llm.briefer import BriefOutcome, LLMBriefer, fallback_brief
from streamproc.llm.client import CircuitState
from streamproc.llm.prices import configured_price
from streamproc.llm.variants import in_canary, make_briefer, variant_settings
from streamproc.ops.logs import bind
from streamproc.ops.metrics import Metrics
from streamproc.privacy.redact import ALIAS_SCHEME

log = logging.getLogger(__name__)
CIRCUIT_VALUE = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}
# Rounds a case may fail on the model path (its brief cannot be encoded or its answer
# stored) before the deterministic brief goes out instead, with reason stage_error.
# A failure to deliver (the broker is away) is not the model's: the case waits for it.
MAX_STAGE_FAILURES = 3
SHADOW_MAX_IN_FLIGHT = 64  # shadow briefs under way; past it a case gets none (counted)
# Past the case deadline, a brief that has not come back is cut off: room for its
# redaction and guardrails behind the other cases' on the one brief CPU thread.
BACKSTOP_S = 10.0
# Cases under way per model slot: while one case is with the provider, the next has its
# prompt ready and the last has its guardrails checked and its brief written.
CASES_PER_MODEL_SLOT = 2
SERVING_POLL_S = 0.05  # how often a finished call looks whether the rebalance is over


class Ownership(Protocol):
    """What the stage asks of the worker before it writes: is it serving (not
    rebalancing, state restored), and does it own the partition?"""

    def serving(self) -> bool: ...

    def owns(self, partition: int) -> bool: ...


class _AlwaysOwner:
    def serving(self) -> bool:
        return True

    def owns(self, partition: int) -> bool:
        return True


def cached_draft(entry: Any) -> dict[str, Any] | None:
    """The model's answer in an `llm_cache` entry ({"draft", "at", "p"}; entries written
    before that form are the answer itself)."""
    if isinstance(entry, dict) and "at" in entry and "draft" in entry:
        draft: dict[str, Any] = entry["draft"]
        return draft
    return entry if isinstance(entry, dict) else None


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
        owner: Ownership | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.s, self.codec, self.metrics, self.briefer = settings, codec, metrics, briefer
        self.canary, self.shadow = canary, shadow
        self.owner: Ownership = owner if owner is not None else _AlwaysOwner()
        self.clock = clock
        # Each variant's own settings: its case deadline, its model's price.
        self.variant_settings = {"primary": settings, **variant_settings(settings)}
        self.prices = {n: configured_price(v) for n, v in self.variant_settings.items()}
        metrics.llm_cost_estimated.set(0 if None in self.prices.values() else 1)
        self.shadow_tasks: set[asyncio.Task[None]] = set()
        self.cache, self.publish, self.send, self.persist = cache, publish, send, persist
        self.in_flight: dict[str, asyncio.Task[None]] = {}  # cases under way
        self.max_cases = CASES_PER_MODEL_SLOT * settings.llm_max_concurrency
        self.partition_of: dict[str, int] = {}
        self.offered_at: dict[str, float] = {}  # when each case under way was offered
        # Cases under way that have not reached their model call (preparing, waiting for a
        # slot): a revocation hands them back like queued ones, nothing paid for.
        self.before_call: set[str] = set()
        self.queued: dict[str, tuple[BriefPlan, float]] = {}  # waiting for a slot, in order
        self.fallbacks: dict[str, asyncio.Task[None]] = {}  # waited too long: no slot used
        self.failures: dict[str, int] = {}  # failed rounds of a case, until it is published
        self._unsent: dict[str, tuple[str, BriefOutcome]] = {}  # audit not delivered yet
        self._last_sweep = clock()

    # -- which cases go where ---------------------------------------------------------

    def busy(self, case_id: str) -> bool:
        """Is the case being briefed, or waiting for a slot? The worker then leaves it."""
        return case_id in self.in_flight or case_id in self.queued or case_id in self.fallbacks

    def offer(self, plan: BriefPlan) -> None:
        """Start briefing `plan` if a slot is free; otherwise it waits in the queue."""
        if self.busy(plan.case_id):
            return
        if len(self.in_flight) >= self.max_cases:
            self.queued[plan.case_id] = (plan, self.clock())
            return
        self._start(plan, self.clock())

    def _start(self, plan: BriefPlan, offered_at: float) -> None:
        task = asyncio.create_task(self._brief(plan), name=f"llm-brief-{plan.case_id}")
        self.in_flight[plan.case_id] = task
        self.partition_of[plan.case_id] = plan.partition
        self.offered_at[plan.case_id] = offered_at
        self.before_call.add(plan.case_id)
        task.add_done_callback(lambda _t: self._done(plan.case_id))

    def _done(self, case_id: str) -> None:
        self.in_flight.pop(case_id, None)
        self.partition_of.pop(case_id, None)
        self.offered_at.pop(case_id, None)
        self.before_call.discard(case_id)
        self._start_queued()

    def _start_queued(self) -> None:
        """Fill free slots from the queue, oldest first; too old: deterministic brief."""
        self.expire_queued()
        while self.queued and len(self.in_flight) < self.max_cases:
            case_id = next(iter(self.queued))
            plan, since = self.queued.pop(case_id)
            self._start(plan, since)

    def expire_queued(self) -> int:
        """Publish the deterministic brief of cases that waited LLM_QUEUE_MAX_WAIT_S."""
        oldest_allowed, expired = self.clock() - self.s.llm_queue_max_wait_s, 0
        for case_id, (plan, since) in list(self.queued.items()):
            if since > oldest_allowed:
                break  # the queue is in arrival order
            del self.queued[case_id]
            task = asyncio.create_task(self._queue_timeout(plan), name=f"llm-queue-{case_id}")
            self.fallbacks[case_id] = task
            task.add_done_callback(self._fallback_done)
            expired += 1
        return expired

    def _fallback_done(self, task: asyncio.Task[None]) -> None:
        for case_id, running in list(self.fallbacks.items()):
            if running is task:
                del self.fallbacks[case_id]

    def briefer_for(self, case_id: str) -> LLMBriefer:
        """The canary for LLM_CANARY_SHARE of the cases (by a stable hash), else the primary."""
        if self.canary is not None and in_canary(case_id, self.s.llm_canary_share):
            return self.canary
        return self.briefer

    # -- rebalances and shutdown ----------------------------------------------------------

    def hand_back(self, partitions: set[int]) -> int:
        """Partitions revoked: their queued cases go, and so do their cases under way
        whose call has not taken a model slot yet (still pending: whoever owns them
        after the rebalance plans them again; nothing was paid for). Calls in flight go
        on; `keep_only` cancels those the new assignment does not give back. Returns
        how many left."""
        dropped = [c for c, (plan, _) in self.queued.items() if plan.partition in partitions]
        for case_id in dropped:
            del self.queued[case_id]
        unsent = [
            c
            for c, task in self.in_flight.items()
            if self.partition_of.get(c) in partitions and c in self.before_call
        ]
        for case_id in unsent:
            self.in_flight[case_id].cancel()
            self.failures.pop(case_id, None)  # whoever briefs it next counts afresh
        return len(dropped) + len(unsent)

    def keep_only(self, partitions: set[int]) -> int:
        """The new assignment: cancel the calls for cases of partitions not in it
        (abandoned: their new owner briefs them). Returns how many."""
        cancelled = 0
        for case_id, task in list(self.in_flight.items()):
            if task.cancelling():  # handed back already: no call of its own
                continue
            if self.partition_of.get(case_id) not in partitions:
                task.cancel()
                self.failures.pop(case_id, None)  # the next owner counts afresh
                self._unsent.pop(case_id, None)
                cancelled += 1
        if cancelled:
            self.metrics.llm_abandoned.labels("rebalance").inc(cancelled)
        return cancelled

    async def drain(self, grace_s: float) -> tuple[int, int]:
        """At shutdown: let in-flight cases finish for up to `grace_s`, then hand the rest
        back (cancelled; still pending, so the next owner briefs them).
        Returns (finished, handed back)."""
        for shadow in self.shadow_tasks:  # best effort, never waited for
            shadow.cancel()
        self.queued.clear()  # still pending: the next owner briefs them
        # No new call in the grace: cases not at their call yet go back to pending too.
        unsent = {self.in_flight[c] for c in self.before_call if c in self.in_flight}
        for task in unsent:
            task.cancel()
        if unsent:
            await asyncio.wait(unsent, timeout=1.0)
        tasks = {*self.in_flight.values(), *self.fallbacks.values()} - unsent
        if not tasks:
            return 0, len(unsent)
        done, still = await asyncio.wait(tasks, timeout=grace_s)
        for task in still:
            task.cancel()
        if still:
            self.metrics.llm_abandoned.labels("shutdown").inc(len(still))
            await asyncio.wait(still, timeout=1.0)
        return len(done), len(still) + len(unsent)

    async def _may_write(self, partition: int) -> bool:
        """Wait until the worker serves (no rebalance, state restored); then, does it
        still own the partition?"""
        while not self.owner.serving():
            await asyncio.sleep(SERVING_POLL_S)
        return self.owner.owns(partition)

    # -- the timer --------------------------------------------------------------------

    def end_round(self) -> None:
        """After the worker offered the due cases of a batch."""
        self.metrics.llm_queue.set(len(self.queued))

    def observe(self) -> None:
        """The timer's round: queue ages, stored answers past their case, gauges."""
        self._start_queued()
        if (
            self.owner.serving()
            and self.clock() - self._last_sweep >= self.s.state_sweep_interval_s
        ):
            self._last_sweep = self.clock()
            self.sweep_cache()
        self.metrics.llm_queue.set(len(self.queued))
        self.metrics.llm_in_flight.set(len(self.in_flight))
        self.metrics.llm_circuit.set(CIRCUIT_VALUE[self.briefer.client.breaker.state])
        budget = self.briefer.client.budget
        budget.check_day_rollover()
        self.metrics.llm_budget_tokens.set(budget.tokens_per_day)
        self.metrics.llm_budget_spent.set(budget.spent)

    def sweep_cache(self) -> int:
        """Delete stored answers older than CASE_RETAIN_H on partitions we own (those of
        cases whose brief never went out here); returns how many."""
        oldest_allowed = self.clock() - self.s.case_retain_h * 3600
        gone = 0
        for key, entry in list(self.cache.items()):
            at = entry.get("at", 0.0) if isinstance(entry, dict) else 0.0
            partition = entry.get("p") if isinstance(entry, dict) and "at" in entry else None
            if partition is None:
                partition = self.cache.partition_of(key)
            if at >= oldest_allowed or partition is None or not self.owner.owns(partition):
                continue
            self.cache.partition = partition
            del self.cache[key]
            gone += 1
        if gone:
            self.metrics.state_expired.labels("llm_cache").inc(gone)
        return gone

    def cache_key(self, plan: BriefPlan, briefer: LLMBriefer | None = None) -> str:
        briefer = briefer or self.briefer
        version, model = briefer.template.version, briefer.client.model
        # With the aliases' scheme: a cached draft's <LINKED_ACCOUNT_2> must mean the
        # account it meant when the draft was written (the numbering changed once).
        return f"{plan.case.content_hash()}:{version}:{model}:{ALIAS_SCHEME}"

    # -- one case -----------------------------------------------------------------------

    async def _brief(self, plan: BriefPlan) -> None:
        with bind(case_id=plan.case_id, brief_id=plan.brief.brief_id):
            await self._brief_bound(plan)

    async def _queue_timeout(self, plan: BriefPlan) -> None:
        with bind(case_id=plan.case_id, brief_id=plan.brief.brief_id):
            briefer = self.briefer_for(plan.case_id)
            outcome = self._fallback(plan, "queue_timeout", briefer)
            self._count(outcome, False)
            await self._write(plan, outcome, self.cache_key(plan, briefer), None)

    async def _brief_bound(self, plan: BriefPlan) -> None:
        briefer = self.briefer_for(plan.case_id)
        key = self.cache_key(plan, briefer)
        cached = cached_draft(self.cache.get(key))
        unsent = self._unsent.pop(plan.case_id, None)
        if unsent is not None and unsent[0] == key:
            self.before_call.discard(plan.case_id)  # past its call: never handed back now
            outcome = unsent[1]  # its audit record was not delivered last round
        else:
            if self.failures.get(plan.case_id, 0) >= MAX_STAGE_FAILURES:
                outcome = self._fallback(plan, "stage_error", briefer)  # keeps failing
            else:
                outcome = await self._outcome(
                    plan,
                    cached,
                    briefer,
                    self.offered_at.get(plan.case_id),
                    lambda: self.before_call.discard(plan.case_id),
                )
            self.before_call.discard(plan.case_id)
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # Handed back while its brief ended without a call (wait_for returns a
                # result that is already there): it goes back to pending, unwritten.
                raise asyncio.CancelledError
            self._count(outcome, cached is not None)
        gen = outcome.brief.generation
        if gen.method is Method.FALLBACK:
            log.warning(
                "model brief fell back to the deterministic brief",
                extra={"fallback_reason": gen.fallback_reason},
            )
        await self._write(plan, outcome, key, cached)

    async def _write(
        self, plan: BriefPlan, outcome: BriefOutcome, key: str, cached: dict[str, Any] | None
    ) -> None:
        """Audit, stored answer, brief, state: in that order (see the module docstring)."""
        if not await self._may_write(plan.partition):
            self.metrics.llm_abandoned.labels("rebalance").inc()
            return  # the partition moved: its new owner briefs the case
        delivering = False  # failures before delivery are the model path's own, and bounded
        try:
            published = plan.with_brief(outcome.brief, self.codec, self.s.topics.briefs)
            if outcome.audit is not None:
                delivering = True
                try:
                    await self.send(self._audit_record(plan, outcome.audit))
                except Exception:
                    self._unsent[plan.case_id] = (key, outcome)  # sent again next round
                    raise
                delivering = False
            if outcome.draft is not None and cached is None:
                # Stored before the brief goes out: a crash after this point re-briefs the
                # case from the stored answer instead of paying for a second call.
                self.cache.partition = plan.partition
                self.cache[key] = {"draft": outcome.draft, "at": self.clock(), "p": plan.partition}
                await self.persist()
            delivering = True
            await self.publish(published)
            if key in self.cache and self.owner.owns(plan.partition):  # not needed again
                self.cache.partition = plan.partition
                del self.cache[key]
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
        self,
        plan: BriefPlan,
        cached: dict[str, Any] | None,
        briefer: LLMBriefer,
        offered: float | None = None,
        on_slot: Callable[[], None] | None = None,
    ) -> BriefOutcome:
        """The model's brief, or the deterministic one with the reason; never raises."""
        deadline_s = self.variant_settings[briefer.variant].llm_case_deadline_s
        now = time.monotonic()
        # The wait for a model slot counts from the offer (LLM_QUEUE_MAX_WAIT_S), or from
        # now for a shadow brief; the case deadline, from the slot's taking (the client
        # moves it by the wait).
        offered = self.clock() if offered is None else offered
        slot_wait_s = max(0.0, offered + self.s.llm_queue_max_wait_s - self.clock())
        try:  # the client fits its attempts into the deadline; this is only a backstop
            return await asyncio.wait_for(
                briefer.brief(
                    plan.case,
                    plan.brief,
                    cached,
                    now + deadline_s,
                    now + slot_wait_s,
                    on_slot,
                    prompt_floor=plan.floor,
                ),
                slot_wait_s + deadline_s + BACKSTOP_S,
            )
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
        checks, claims = split_claims(outcome.violations)
        for check, n in checks.items():
            m.guardrail_violations.labels(check).inc(n)
        for kind, n in claims.items():
            m.claims_cut.labels(kind).inc(n)
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
    owner: Ownership | None = None,
) -> LLMStage | None:
    """The LLM stage when a provider is configured; None for deterministic briefs only."""
    if settings.llm_provider is LLMProvider.NONE:
        return None
    briefer = make_briefer(settings, codec.schemas)
    variants = {
        name: make_briefer(variant, codec.schemas, variant=name)
        for name, variant in variant_settings(settings).items()
    }
    return LLMStage(
        settings,
        codec,
        metrics,
        briefer,
        cache,
        publish,
        send,
        persist,
        canary=variants.get("canary"),
        shadow=variants.get("shadow"),
        owner=owner,
    )
