"""LLM stage figures: briefs/s against a stand-in answering after 800 ms, and prompt size.

Runs the worker's own briefer and client (redaction, prompt, HTTP, validation,
guardrails) against the loopback stand-in provider, many cases at once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from streamproc.brief.prompt import build_prompt, load_template
from streamproc.config import BriefPII
from streamproc.contracts.schemas import SchemaSet
from streamproc.llm.briefer import LLMBriefer
from streamproc.llm.client import LLMClient
from streamproc.llm.providers import provider_for
from streamproc.privacy.redact import Redactor
from streamproc.sim.cases import long_history_case
from tests.llm_stub import StubLLM

LATENCY_S = 0.8
BUDGET_TOKENS = 6000
NOW_MS = int(time.time() * 1000)


def _redactor() -> Redactor:
    s = SchemaSet()
    return Redactor.for_inputs(s)


async def _throughput(concurrency: int, cases: int) -> dict[str, Any]:
    stub = StubLLM(delay_s=LATENCY_S)
    await stub.start()
    client = LLMClient(
        provider_for("openai"), f"{stub.url}/v1", "stub", timeout_s=30, max_concurrency=concurrency
    )
    briefer = LLMBriefer(
        client,
        load_template(),
        _redactor(),
        policy=BriefPII.MASKED,
        max_prompt_tokens=BUDGET_TOKENS,
    )
    case, floor = long_history_case(20)
    try:
        started = time.monotonic()
        outcomes = await asyncio.gather(*(briefer.brief(case, floor) for _ in range(cases)))
        elapsed = time.monotonic() - started
    finally:
        await client.aclose()
        await stub.stop()
    ideal = concurrency / LATENCY_S
    rate = cases / elapsed
    llm = sum(1 for o in outcomes if o.brief.generation.method == "LLM")
    return {
        "concurrency": concurrency,
        "cases": cases,
        "llm_briefs": llm,
        "seconds": round(elapsed, 2),
        "briefs_per_s": round(rate, 1),
        "ideal_per_s": round(ideal, 1),
        "share_of_ideal": round(rate / ideal, 3),
        "max_in_flight_at_provider": stub.max_concurrent,
    }


def run(smoke: bool = False) -> dict[str, Any]:
    """`smoke`: concurrency 1 and 8, cases up to 1,000 events (seconds, not a minute)."""
    levels, sizes = ((1, 8), (10, 1_000)) if smoke else ((1, 8, 64), (10, 1_000, 10_000))
    throughput = [asyncio.run(_throughput(c, max(4 * c, 8))) for c in levels]
    tokens = []
    for n in sizes:
        case, floor = long_history_case(n)
        redacted, _ = _redactor().redact(
            {"alert": case.alerts, "transaction": case.transactions, "signal": case.signals}
        )
        prompt = build_prompt(load_template(), redacted, floor, max_tokens=BUDGET_TOKENS)
        tokens.append(
            {
                "events": n + 1,
                "estimated_prompt_tokens": prompt.estimated_tokens,
                "events_in_prompt": prompt.events_included,
            }
        )
    return {
        "latency_s": LATENCY_S,
        "budget_tokens": BUDGET_TOKENS,
        "throughput": throughput,
        "prompt_tokens": tokens,
    }
