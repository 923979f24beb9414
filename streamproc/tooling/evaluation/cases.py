"""Cases built from a labelled set's events as the worker builds them, then briefed.

The deterministic floor always; with STREAMPROC_LLM_PROVIDER set, the model's brief
through the same redaction, prompt, validation and guardrails as in production, with the
model's own draft kept for scoring before the guardrails.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from streamproc.brief.fallback import build_brief
from streamproc.brief.model import CaseBrief
from streamproc.brief.pii import protect
from streamproc.brief.prompt import load_template
from streamproc.config import LLMProvider, Settings
from streamproc.contracts.codec import AvroCodec
from streamproc.contracts.records import from_json
from streamproc.contracts.schemas import SchemaSet
from streamproc.domain.case import Case, assemble_case
from streamproc.domain.window import SIGNAL, TXN, add_event, empty_window
from streamproc.llm.briefer import prepare
from streamproc.privacy.redact import Redactor
from streamproc.sim.labelled import Label
from streamproc.tooling.evaluation.load import Events, latest

FILES = {"transactions": TXN, "device_signals": SIGNAL}


@dataclass
class CaseResult:
    label: Label
    brief: CaseBrief
    floor: CaseBrief
    prompt_text: str
    prompt_tokens: int
    schema_valid: bool
    case_event_ids: frozenset[str]
    events: dict[str, dict[str, Any]]  # the case's events by event_id (alerts included)
    draft: dict[str, Any] | None = None  # the model's validated draft, before the guardrails
    latency_ms: int | None = None  # the model's answer time (model mode)


def build_cases(settings: Settings, schemas: SchemaSet, events: Events) -> dict[str, Case]:
    """Windows per account, then one case per case_id, as the worker assembles them."""
    topics = settings.topics
    topic_of = {"transactions": topics.transactions, "device_signals": topics.device_signals}
    lookback_ms = int(settings.lookback_h * 3600 * 1000)
    windows: dict[str, Any] = {}
    now_ms = latest(events)
    for name, kind in FILES.items():
        schema = schemas.for_topic(topic_of[name])
        for raw in events[name]:
            rec = from_json(schema, raw, now_ms=now_ms)
            add_event(
                windows.setdefault(rec["account_id"], empty_window()),
                kind,
                rec,
                lookback_ms=lookback_ms,
                max_events=settings.max_events_per_account,
            )
    alert_schema = schemas.for_topic(topics.alerts)
    by_case: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for raw in events["alerts"]:
        rec = from_json(alert_schema, raw, now_ms=now_ms)
        by_case[rec["case_id"]].append(rec)
    return {
        case_id: assemble_case(
            case_id,
            alerts[0]["account_id"],
            alerts,
            windows.get(alerts[0]["account_id"], empty_window()),
            lookback_ms=lookback_ms,
            after_ms=int(settings.case_after_s * 1000),
        )
        for case_id, alerts in by_case.items()
    }


async def brief_cases(
    settings: Settings, schemas: SchemaSet, cases: dict[str, Case], labels: list[Label]
) -> list[CaseResult]:
    codec = AvroCodec(schemas)
    redactor = Redactor.for_inputs(schemas, settings.topics)
    template = load_template()
    briefer = None
    if settings.llm_provider is not LLMProvider.NONE:
        from streamproc.llm.variants import make_briefer

        briefer = make_briefer(settings, schemas)
    now = int(time.time() * 1000)
    slots = asyncio.Semaphore(settings.llm_max_concurrency)

    async def one(label: Label) -> CaseResult:
        case = cases[label.case_id]
        floor = protect(
            build_brief(case, version=1, generated_at_ms=now), case, redactor, settings.brief_pii
        )  # as the worker publishes it
        _, prompt, _ = prepare(redactor, template, case, floor, settings.llm_max_prompt_tokens)
        brief, tokens, draft, latency = floor, prompt.estimated_tokens, None, None
        if briefer is not None:
            async with slots:
                outcome = await briefer.brief(case, floor)
            brief, draft = outcome.brief, outcome.draft
            if outcome.audit is not None:
                tokens = outcome.audit.get("prompt_tokens") or tokens
                latency = outcome.audit.get("latency_ms")
        events = {r["event_id"]: r for r in (*case.alerts, *case.transactions, *case.signals)}
        return CaseResult(
            label,
            brief,
            floor,
            prompt.system + "\n" + prompt.user,
            tokens,
            _schema_valid(brief, codec, settings),
            case.event_ids,
            events,
            draft,
            latency,
        )

    try:
        return list(await asyncio.gather(*(one(label) for label in labels)))
    finally:
        if briefer is not None:
            await briefer.client.aclose()


def _schema_valid(brief: CaseBrief, codec: AvroCodec, settings: Settings) -> bool:
    """The brief round-trips through its model and encodes with the Avro contract."""
    try:
        CaseBrief.model_validate(brief.model_dump(mode="json"))
        codec.encode(settings.topics.briefs, brief.to_avro())
    except Exception:
        return False
    return True
