"""Guardrails: what a model's draft may change in a brief, and what it may not.

The model cannot talk the risk down: level and score never go below the deterministic
floor, and the floor's reason codes and actions stay. Evidence ids that are not events
of the case are dropped, and a fact left without evidence goes too. URLs, PII-shaped
strings (the model only ever saw placeholders, so any raw PII is not from the case)
and placeholders the case does not have are removed from every text. The brief PII
policy is applied last. Each intervention is counted by check.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from itertools import chain
from typing import TypeVar

from streamproc.brief.draft import BriefDraft
from streamproc.brief.model import (
    SUMMARY_MAX,
    Action,
    CaseBrief,
    Generation,
    KeyFact,
    ReasonCode,
)
from streamproc.config import BriefPII
from streamproc.privacy.detect import find_all
from streamproc.privacy.redact import Vault, apply_policy

# Links of any kind: web and file URLs, script and data URIs (a scheme directly
# followed by text, so prose such as "missing data: none" stays), bare www. hosts,
# and host/path forms of common TLDs.
URL = re.compile(
    r"(?i)\b(?:https?://|ftp://|file:/|www\.)\S+"
    r"|(?:javascript|vbscript|data):\S+"  # no \b: obfuscations glue them to other words
    r"|\b[a-z0-9\-]+\.(?:com|net|org|io|ru|xyz|top)/\S*"
)
REMOVED = "[removed]"
T = TypeVar("T", ReasonCode, Action)
# The bounded label set of streamproc_guardrail_violations_total{check}.
CHECKS = (
    "schema_rejected",  # an answer that broke the schema (closed enums included)
    "risk_floor",
    "reason_kept",
    "action_kept",
    "evidence_dropped",
    "fact_dropped",
    "url_removed",
    "pii_removed",
    "invented_placeholder",
    "summary_truncated",
)


def clean_text(text: str, vault: Vault, policy: BriefPII, counts: Counter[str]) -> str:
    """URLs and raw PII out, unknown placeholders out, policy applied to the rest."""
    text, n = URL.subn(REMOVED, text)
    counts["url_removed"] += n
    for span in reversed(find_all(text, {}, ())):
        text = text[: span.start] + REMOVED + text[span.end :]
        counts["pii_removed"] += 1
    text, invented = apply_policy(text, vault, policy)
    counts["invented_placeholder"] += invented
    return text


def _union(first: Iterable[T], floor: Iterable[T]) -> list[T]:
    return list(dict.fromkeys(chain(first, floor)))


def merge(
    draft: BriefDraft,
    floor: CaseBrief,
    case_event_ids: set[str] | frozenset[str],
    vault: Vault,
    policy: BriefPII,
    generation: Generation,
) -> tuple[CaseBrief, Counter[str]]:
    """The published brief from a validated draft and the deterministic brief (the floor)."""
    counts: Counter[str] = Counter()
    score, level = draft.risk_score, draft.risk_level
    if score < floor.risk_score or level.rank < floor.risk_level.rank:
        counts["risk_floor"] += 1
        score, level = (
            max(score, floor.risk_score),
            max(level, floor.risk_level, key=lambda x: x.rank),
        )
    reasons = _union(draft.reason_codes, floor.reason_codes)
    counts["reason_kept"] += len(reasons) - len(dict.fromkeys(draft.reason_codes))
    chosen = set(_union(draft.recommended_actions, floor.recommended_actions))
    actions = [a for a in Action if a in chosen]  # enum order is the priority order
    counts["action_kept"] += len(actions) - len(set(draft.recommended_actions))
    facts = []
    for fact in draft.key_facts:
        cited = list(dict.fromkeys(fact.evidence_event_ids))
        evidence = [e for e in cited if e in case_event_ids]
        counts["evidence_dropped"] += len(cited) - len(evidence)
        if not evidence:
            counts["fact_dropped"] += 1
            continue
        facts.append(
            KeyFact(text=clean_text(fact.text, vault, policy, counts), evidence_event_ids=evidence)
        )
    summary = clean_text(draft.summary, vault, policy, counts)
    if len(summary) > SUMMARY_MAX:
        counts["summary_truncated"] += 1
        summary = summary[: SUMMARY_MAX - 1] + "…"
    brief = floor.model_copy(
        update={
            "risk_level": level,
            "risk_score": score,
            "reason_codes": reasons,
            "summary": summary,
            "key_facts": facts or floor.key_facts,  # no grounded fact left: the events' own
            "recommended_actions": actions,
            "confidence": draft.confidence,
            "generation": generation,
            "redaction": vault.counts(),
        }
    )
    return CaseBrief.model_validate(brief.model_dump()), +counts
