"""One case through the model: redact, prompt, call, validate (one repair), guard, merge.

Whatever happens, a brief comes out: the model's, merged onto the deterministic floor
by the guardrails, or the deterministic brief itself with `method=FALLBACK` and a
bounded reason. The audit record holds what the model saw (redacted) and said.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

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
    LLMOutputError,
    LLMQuotaExhausted,
    LLMRateLimited,
    LLMRequestError,
    LLMTimeout,
)
from streamproc.llm.client import LLMClient
from streamproc.llm.providers import LLMRequest
from streamproc.privacy.redact import Redactor, Vault

# Fallback reason by error; with "provider_error" for the rest, and the LLM stage's own
# "timeout" (case deadline) and "stage_error" (its brief kept failing), the bounded
# label set of streamproc_llm_fallbacks_total{reason}.
_REASON_OF: tuple[tuple[type[LLMError], str], ...] = (
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
    ) -> BriefOutcome:
        """The model's brief merged onto the floor, or the floor with the reason; by
        `deadline` (time.monotonic()), which the client fits its attempts into."""
        # Redaction and the prompt are CPU work that grows with the case: done in a thread
        # so the worker's event loop keeps ingesting meanwhile.
        vault, prompt, quoted = await asyncio.to_thread(
            prepare, self.redactor, self.template, case, floor, self.max_prompt_tokens
        )
        gen = self.generation_fields(floor)
        if cached_draft is not None:
            draft = BriefDraft.model_validate(cached_draft)
            brief, counts = merge(
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
            draft = await self._ask(prompt, audit, deadline)
        except LLMError as exc:
            reason = fallback_reason(exc)
            audit.update(
                outcome="fallback",
                fallback_reason=reason,
                error=type(exc).__name__,
                provider_error=exc.provider_message,
                latency_ms=int((time.monotonic() - started) * 1000),
            )
            brief = fallback_brief(
                floor, reason, gen, audit["prompt_tokens"], audit["completion_tokens"]
            ).model_copy(update={"redaction": vault.counts()})
            rejected = Counter({"schema_rejected": audit["schema_rejections"]})
            return BriefOutcome(brief, None, audit, +rejected, vault.counts())
        latency = int((time.monotonic() - started) * 1000)
        generation = Generation(
            method=Method.LLM,
            **gen,
            prompt_tokens=audit["prompt_tokens"],
            completion_tokens=audit["completion_tokens"],
            latency_ms=latency,
        )
        brief, counts = merge(draft, floor, case, vault, self.policy, generation, quoted)
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
        self, prompt: Prompt, audit: dict[str, Any], deadline: float | None
    ) -> BriefDraft:
        """The draft, after at most one repair attempt; LLMOutputError when still invalid."""
        request = self._request(prompt)
        errors = ""
        for attempt in ("first", "repair"):
            try:
                result = await self.client.complete(request, deadline)
            except LLMOutputError as exc:
                errors = str(exc)
                audit["schema_rejections"] += 1
                audit["responses"].append({"attempt": attempt, "error": errors})
            else:
                audit["prompt_tokens"] += result.response.prompt_tokens
                audit["completion_tokens"] += result.response.completion_tokens
                audit["retries"] += result.retries
                audit["responses"].append({"attempt": attempt, "raw": result.response.raw})
                try:
                    draft = BriefDraft.model_validate(
                        map_back(result.response.content, prompt.refs)
                    )
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
        {"alert": case.alerts, "transaction": case.transactions, "signal": case.signals}
    )
    prompt = build_prompt(
        template,
        redacted,
        floor,
        max_tokens=max_tokens,
        scrub=lambda text: redactor.redact_text(text, vault),
    )
    quoted = echo_grams(
        r[name]
        for kind, records in redacted.items()
        for r in records
        for name in redactor.schemas[kind].free_text_fields
        if isinstance(r.get(name), str)
    )
    return vault, prompt, quoted


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
        "estimated_prompt_tokens": prompt.estimated_tokens,
    }
