"""Briefers built from settings: the primary's, the shadow's and the canary's."""

from __future__ import annotations

import hashlib

from streamproc.brief.prompt import load_template
from streamproc.config import Settings
from streamproc.contracts.schemas import SchemaSet
from streamproc.llm.briefer import LLMBriefer
from streamproc.llm.client import Budget, CircuitBreaker, LLMClient, RetryPolicy
from streamproc.llm.providers import provider_for
from streamproc.privacy.redact import Redactor


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
