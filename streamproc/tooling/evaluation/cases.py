"""Cases built from a labelled set's events as the worker builds them, then briefed.

The deterministic floor always; with STREAMPROC_LLM_PROVIDER set, the model's brief
through the same redaction, prompt, validation and guardrails as in production, with the
model's own draft kept for scoring before the guardrails.
"""

from __future__ import annotations

import asyncio
import dataclasses
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
from streamproc.contracts.records import from_json, parse_timestamp
from streamproc.contracts.schemas import SchemaSet
from streamproc.domain.case import Case, assemble_case
from streamproc.domain.window import SIGNAL, TXN, add_event, empty_window
from streamproc.llm.briefer import prepare
from streamproc.network import links as L
from streamproc.network.entities import EntityHasher, linkable
from streamproc.network.index import EntityEntry
from streamproc.privacy.redact import Redactor
from streamproc.sim.labelled import Label
from streamproc.tooling.evaluation.load import Events, latest

FILES = {"transactions": TXN, "device_signals": SIGNAL}
EVAL_ENTITY_KEY = b"streamproc-eval-entity-index-key"  # the sets' own: links are keyed hashes


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
    cases = {
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
    records = {
        kind: [from_json(schemas.for_topic(topic_of[name]), r, now_ms=now_ms) for r in events[name]]
        for name, kind in (("transactions", "transaction"), ("device_signals", "signal"))
    }
    records["alert"] = [r for alerts in by_case.values() for r in alerts]
    return with_links(cases, records, events.get("feedback", []), settings)


def with_links(
    cases: dict[str, Case],
    records: dict[str, list[dict[str, Any]]],
    feedback: list[dict[str, Any]],
    settings: Settings,
) -> dict[str, Case]:
    """The cases with the entity index's answers, as the worker's round trip gives them
    (engine/network.py): every event sighted, each case asking as of its last alert, each
    decision sent to its case's entities, all in event-time order; the same messages,
    entries and assessment as the worker's, without the topics between them."""
    hasher = EntityHasher(EVAL_ENTITY_KEY)
    lookback_ms = int(settings.links_lookback_h * 3600 * 1000)
    family: dict[str, str] = {}
    family_at: dict[str, int] = {}
    for alert in sorted(records["alert"], key=lambda a: a["occurred_at"]):
        name = L.family_of(hasher, alert.get("customer_name"))
        if name is not None and alert["account_id"] not in family:
            family[alert["account_id"]] = name
            family_at[alert["account_id"]] = alert["occurred_at"]
    messages: list[tuple[int, int, dict[str, Any]]] = []
    for kind, recs in records.items():
        for r in recs:
            who, at = r["account_id"], r["occurred_at"]
            for entity_kind, value in linkable(kind, r):
                key = hasher.key_of(entity_kind, value)
                if key is not None:
                    sighted = L.sighting(entity_kind, key, who, at, family.get(who),
                                         family_at.get(who))  # fmt: skip
                    messages.append((at, 0, sighted))
    wanted = {cid: L.case_entities(hasher.key_of, case) for cid, case in cases.items()}
    for cid, case in cases.items():
        as_of = case.alerts[-1]["occurred_at"]
        for key, (kind, _) in wanted[cid].items():
            who = case.account_id
            ask = L.ask(kind.value, key, who, cid, as_of, 0, family.get(who), family_at.get(who))
            messages.append((as_of, 1, ask))
    for fb in feedback:
        if fb["case_id"] not in wanted:
            continue
        at = parse_timestamp(fb["decided_at"], "decided_at")
        for key, (kind, _) in wanted[fb["case_id"]].items():
            messages.append(
                (
                    at,
                    2,
                    L.decision(
                        kind.value, key, fb["account_id"], fb["case_id"], fb["disposition"], at
                    ),
                )
            )
    messages.sort(key=lambda m: (m[0], m[1]))
    entries: dict[str, EntityEntry] = {}
    answered: dict[tuple[str, str], dict[str, Any]] = {}
    for _, _, message in messages:
        key = message["e"]
        entries[key] = L.apply(entries.get(key), message, lookback_ms)
        if message["t"] == L.ASK:
            answered[(message["c"], key)] = L.answer(entries[key], message, lookback_ms)
    out = {}
    for cid, case in cases.items():
        answers = tuple(
            L.Answered.of(kind, key, evidence, answered[(cid, key)])
            for key, (kind, evidence) in sorted(wanted[cid].items())
        )
        out[cid] = dataclasses.replace(case, links=answers, family=family.get(case.account_id))
    return out


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
        unprotected = build_brief(case, version=1, generated_at_ms=now)
        floor = protect(unprotected, case, redactor, settings.brief_pii)  # as published
        # The prompt from the brief before the policy masks it, as the worker writes it.
        _, prompt, _ = prepare(
            redactor, template, case, unprotected, settings.llm_max_prompt_tokens
        )
        brief, tokens, draft, latency = floor, prompt.estimated_tokens, None, None
        if briefer is not None:
            async with slots:
                outcome = await briefer.brief(case, floor, prompt_floor=unprotected)
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
