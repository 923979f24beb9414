"""One case through the model: redact, prompt, call, validate (one repair), guard, merge.

Whatever happens, a brief comes out: the model's, merged onto the deterministic floor
by the guardrails, or the deterministic brief itself with `method=FALLBACK` and a
bounded reason. The audit record holds what the model saw (redacted) and said.

The CPU work of a brief (redaction and prompt before the call; guardrails and claim
checker after it) runs on one thread of its own, `CPU_STEPS`, for every brief of the
process, one step at a time, each step handed to the thread through the event loop. The
loop keeps the I/O: ingestion, the model calls going out and their answers coming in.
Run on the loop, a burst of answers (64 calls sent together come back together) would
queue every waiting call's send behind all of their guardrails; queued back to back on
the thread, or spread over many threads, the steps would keep the GIL from the loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
import weakref
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from pydantic import ValidationError

from streamproc.brief.draft import BriefDraft, output_schema
from streamproc.brief.guardrails import echo_grams, merge, split_claims
from streamproc.brief.model import CaseBrief, Generation, Method
from streamproc.brief.prompt import Prompt, PromptTemplate, build_prompt, map_back
from streamproc.config import BriefPII
from streamproc.domain.case import Case
from streamproc.errors import (
    LLMBudgetExhausted,
    LLMCircuitOpen,
    LLMError,
    LLMNoSlot,
    LLMOutputError,
    LLMQuotaExhausted,
    LLMRateLimited,
    LLMRequestError,
    LLMTimeout,
)
from streamproc.llm.client import LLMClient
from streamproc.llm.providers import LLMRequest
from streamproc.privacy.redact import Redactor, Vault

_T = TypeVar("_T")
CPU_STEPS = ThreadPoolExecutor(max_workers=1, thread_name_prefix="brief-cpu")
_TURNS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)

# Fallback reason by error; with "provider_error" for the rest, and the LLM stage's own
# "timeout" (case deadline) and "stage_error" (its brief kept failing), the bounded
# label set of streamproc_llm_fallbacks_total{reason}.
_REASON_OF: tuple[tuple[type[LLMError], str], ...] = (
    (LLMNoSlot, "queue_timeout"),
    (LLMCircuitOpen, "circuit_open"),
    (LLMTimeout, "timeout"),
    (LLMRateLimited, "rate_limited"),
    (LLMQuotaExhausted, "quota_exhausted"),
    (LLMBudgetExhausted, "budget_exhausted"),
    (LLMRequestError, "request_rejected"),
    (LLMOutputError, "invalid_output"),
)


def fallback_reason(exc: LLMError) -> str:
    return next((reason for cls, reason in _REASON_OF if isinstance(exc, cls)), "provider_error")


def fallback_brief(
    floor: CaseBrief,
    reason: str,
    generation: dict[str, Any],
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
) -> CaseBrief:
    """The deterministic brief, saying which model was tried and why it was not used."""
    gen = Generation(
        method=Method.FALLBACK,
        fallback_reason=reason,
        **generation,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )
    return floor.model_copy(update={"generation": gen})


@dataclass
class BriefOutcome:
    brief: CaseBrief
    draft: dict[str, Any] | None  # the validated draft, for the replay cache
    audit: dict[str, Any] | None  # None when no request was sent
    violations: Counter[str] = field(default_factory=Counter)
    redactions: dict[str, int] = field(default_factory=dict)


class LLMBriefer:
    def __init__(
        self,
        client: LLMClient,
        template: PromptTemplate,
        redactor: Redactor,
        *,
        policy: BriefPII,
        max_prompt_tokens: int,
        max_output_tokens: int = 2000,
        variant: str = "primary",
    ) -> None:
        self.client, self.template, self.redactor = client, template, redactor
        self.variant = variant
        self.policy, self.max_prompt_tokens = policy, max_prompt_tokens
        self.max_output_tokens = max_output_tokens

    async def brief(
        self,
        case: Case,
        floor: CaseBrief,
        cached_draft: dict[str, Any] | None = None,
        deadline: float | None = None,
        slot_by: float | None = None,
        on_slot: Callable[[], None] | None = None,
        prompt_floor: CaseBrief | None = None,
    ) -> BriefOutcome:
        """The model's brief merged onto the floor, or the floor with the reason; by
        `deadline` (time.monotonic()), which the client fits its attempts into. With
        `slot_by`, a case still waiting for a model slot then falls back (queue_timeout),
        nothing sent and no audit record. `on_slot`: called as a call takes its slot.
        `prompt_floor`: the floor before the brief PII policy masked it (the prompt is
        written from it, redacted; `floor`, as published, is what the brief merges onto)."""
        preparing = time.monotonic()
        vault, prompt, quoted = await _cpu(
            prepare,
            self.redactor,
            self.template,
            case,
            prompt_floor or floor,
            self.max_prompt_tokens,
        )
        if deadline is not None and slot_by is not None:  # it counts from the slot's taking
            deadline += time.monotonic() - preparing
        gen = self.generation_fields(floor)
        if cached_draft is not None:
            draft = BriefDraft.model_validate(cached_draft)
            brief, counts = await _cpu(
                merge,
                draft,
                floor,
                case,
                vault,
                self.policy,
                Generation(method=Method.LLM, **gen),
                quoted,
            )
            return BriefOutcome(brief, cached_draft, None, counts, vault.counts())
        audit = {**_audit(case, floor, prompt, self.client), "variant": self.variant}
        started = time.monotonic()
        try:
            draft = await self._ask(prompt, audit, deadline, slot_by, on_slot)
        except LLMNoSlot:
            return BriefOutcome(fallback_brief(floor, "queue_timeout", gen), None, None)
        except LLMError as exc:
            audit["slot_wait_ms"] += exc.slot_wait_ms
            reason = fallback_reason(exc)
            audit.update(
                outcome="fallback",
                fallback_reason=reason,
                error=type(exc).__name__,
                provider_error=exc.provider_message,
                latency_ms=int((time.monotonic() - started) * 1000) - audit["slot_wait_ms"],
            )
            brief = fallback_brief(
                floor, reason, gen, audit["prompt_tokens"], audit["completion_tokens"]
            ).model_copy(update={"redaction": vault.counts()})
            rejected = Counter({"schema_rejected": audit["schema_rejections"]})
            return BriefOutcome(brief, None, audit, +rejected, vault.counts())
        latency = int((time.monotonic() - started) * 1000) - audit["slot_wait_ms"]
        generation = Generation(
            method=Method.LLM,
            **gen,
            prompt_tokens=audit["prompt_tokens"],
            completion_tokens=audit["completion_tokens"],
            latency_ms=latency,
        )
        brief, counts = await _cpu(
            merge, draft, floor, case, vault, self.policy, generation, quoted
        )
        counts["schema_rejected"] += audit["schema_rejections"]
        counts = +counts
        checks, claims = split_claims(counts)
        audit.update(
            outcome="llm",
            latency_ms=latency,
            guardrail_violations=dict(checks),
            claim_cuts=dict(claims),  # sentences the claim checker cut, by kind of claim
        )
        return BriefOutcome(brief, draft.model_dump(mode="json"), audit, counts, vault.counts())

    def generation_fields(self, floor: CaseBrief) -> dict[str, Any]:
        """What a brief's `generation` says of the model, whichever way the brief went."""
        return {
            "provider": self.client.provider.name,
            "model": self.client.model,
            "prompt_version": self.template.version,
            "generator_version": floor.generation.generator_version,
            "variant": self.variant,
        }

    async def _ask(
        self,
        prompt: Prompt,
        audit: dict[str, Any],
        deadline: float | None,
        slot_by: float | None = None,
        on_slot: Callable[[], None] | None = None,
    ) -> BriefDraft:
        """The draft, after at most one repair attempt; LLMOutputError when still invalid."""
        request = self._request(prompt)
        errors = ""
        for attempt in ("first", "repair"):
            try:  # a repair has had its turn: it waits for a slot only within the deadline
                result = await self.client.complete(
                    request, deadline, slot_by if attempt == "first" else None, on_slot
                )
            except LLMOutputError as exc:
                deadline = _waited(audit, deadline, exc.slot_wait_ms)
                errors = str(exc)
                audit["schema_rejections"] += 1
                audit["responses"].append({"attempt": attempt, "error": errors})
            else:
                deadline = _waited(audit, deadline, result.slot_wait_ms)
                audit["prompt_tokens"] += result.response.prompt_tokens
                audit["completion_tokens"] += result.response.completion_tokens
                audit["retries"] += result.retries
                audit["responses"].append({"attempt": attempt, "raw": result.response.raw})
                try:
                    draft = _validate(result.response.content, prompt.refs)
                except ValidationError as exc:
                    errors = _describe(exc)
                    audit["schema_rejections"] += 1
                else:
                    audit["validation"] = "ok" if attempt == "first" else "repaired"
                    return draft
            audit["validation"] = "invalid"
            request = replace(request, user=prompt.user + _repair_note(errors))
        raise LLMOutputError(f"answer invalid after one repair attempt: {errors[:200]}")

    def _request(self, prompt: Prompt) -> LLMRequest:
        """The request for a prompt: evidence pinned to the events the model was shown."""
        return LLMRequest(
            prompt.system,
            prompt.user,
            output_schema(prompt.shown_refs),
            self.max_output_tokens,
            output_schema(prompt.shown_refs, grammar_bounds=True),
        )


def prepare(
    redactor: Redactor, template: PromptTemplate, case: Case, floor: CaseBrief, max_tokens: int
) -> tuple[Vault, Prompt, frozenset[tuple[str, ...]]]:
    """The case redacted into a prompt, its vault, and its free text as the model saw it
    (for the echo guard). The deterministic assessment in the prompt is redacted too."""
    redacted, vault = redactor.redact(
        {"alert": case.alerts, "transaction": case.transactions, "signal": case.signals},
        linked=dict.fromkeys(link.account_id for link in floor.linked_accounts),
    )
    prompt = build_prompt(
        template,
        redacted,
        floor,
        max_tokens=max_tokens,
        scrub=lambda text: redactor.redact_text(text, vault),
        alias=vault.alias,
    )
    quoted = echo_grams(
        r[name]
        for kind, records in redacted.items()
        for r in records
        for name in redactor.schemas[kind].free_text_fields
        if isinstance(r.get(name), str)
    )
    return vault, prompt, quoted


async def _cpu(fn: Callable[..., _T], *args: Any) -> _T:
    """`fn(*args)` on the brief CPU thread, one step at a time, each handed over through
    the event loop (see the module docstring): queued in the executor instead, the steps
    would run back to back and the loop would get the GIL only between switch intervals."""
    loop = asyncio.get_running_loop()
    turn = _TURNS.get(loop)
    if turn is None:
        turn = _TURNS[loop] = asyncio.Lock()
    context = contextvars.copy_context()  # the log's case and brief ids, as to_thread does
    async with turn:
        return await loop.run_in_executor(CPU_STEPS, context.run, fn, *args)


def _waited(audit: dict[str, Any], deadline: float | None, slot_wait_ms: int) -> float | None:
    """Count a call's wait for its model slot; the case deadline, which counts from the
    first call's slot, moves by that wait."""
    first = not audit["responses"]
    audit["slot_wait_ms"] += slot_wait_ms
    if first and deadline is not None:
        return deadline + slot_wait_ms / 1000
    return deadline


def _validate(content: dict[str, Any], refs: dict[str, str]) -> BriefDraft:
    return BriefDraft.model_validate(map_back(content, refs))


def _describe(exc: ValidationError) -> str:
    """Validation errors by field path and message, never the offending values."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
        for e in exc.errors(include_input=False)[:20]
    )


def _repair_note(errors: str) -> str:
    return (
        "\n\nYour previous answer was rejected: " + errors + ". Answer again with JSON "
        "that follows the schema exactly; use only the given event references."
    )


def _audit(case: Case, floor: CaseBrief, prompt: Prompt, client: LLMClient) -> dict[str, Any]:
    return {
        "case_id": case.case_id,
        "brief_id": floor.brief_id,
        "brief_version": floor.brief_version,
        "prompt_version": prompt.version,
        "provider": client.provider.name,
        "model": client.model,
        "request": {"system": prompt.system, "user": prompt.user},
        "responses": [],
        "validation": None,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "retries": 0,
        "schema_rejections": 0,
        "slot_wait_ms": 0,
        "estimated_prompt_tokens": prompt.estimated_tokens,
    }
