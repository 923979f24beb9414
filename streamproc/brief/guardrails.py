"""Guardrails: what a model's draft may change in a brief, and what it may not.

The model cannot talk the risk down: level and score never go below the deterministic
floor, and the floor's reason codes and actions stay. Evidence ids that are not events
of the case are dropped, and a fact left without evidence goes too. URLs, PII-shaped
strings (the model only ever saw placeholders, so any raw PII is not from the case),
placeholders the case does not have, and runs of six or more words copied from the
case's free text (where injected instructions live) are removed from every text. The brief PII
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
    "free_text_echo",  # case free text (memo, analyst note, ...) repeated word for word
)
ECHO_WORDS = 6  # a run this long copied from the case's free text is quoted, not written
WORD = re.compile(r"[^\W_]+")
QUOTE_REMOVED = "[quoted case text removed]"


def echo_grams(texts: Iterable[str]) -> frozenset[tuple[str, ...]]:
    """Every run of ECHO_WORDS words in the case's free-text fields (as the model saw them)."""
    grams: set[tuple[str, ...]] = set()
    for text in texts:
        words = [w.lower() for w in WORD.findall(text)]
        grams.update(tuple(words[i : i + ECHO_WORDS]) for i in range(len(words) - ECHO_WORDS + 1))
    return frozenset(grams)


def strip_echo(text: str, grams: frozenset[tuple[str, ...]], counts: Counter[str]) -> str:
    """Cut runs of words copied from the case's free text: attacker-written instructions in
    a memo or note must not reach the analyst through the model's prose."""
    if not grams:
        return text
    words = list(WORD.finditer(text))
    lowered = [w.group().lower() for w in words]
    covered = [False] * len(words)
    for i in range(len(words) - ECHO_WORDS + 1):
        if tuple(lowered[i : i + ECHO_WORDS]) in grams:
            covered[i : i + ECHO_WORDS] = [True] * ECHO_WORDS
    spans: list[tuple[int, int]] = []
    for i, hit in enumerate(covered):
        if not hit:
            continue
        if spans and covered[i - 1]:
            spans[-1] = (spans[-1][0], words[i].end())
        else:
            spans.append((words[i].start(), words[i].end()))
    for start, end in reversed(spans):
        text = text[:start] + QUOTE_REMOVED + text[end:]
    counts["free_text_echo"] += len(spans)
    return text


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
    quoted: frozenset[tuple[str, ...]] = frozenset(),
) -> tuple[CaseBrief, Counter[str]]:
    """The published brief from a validated draft and the deterministic brief (the floor).
    `quoted`: echo_grams of the case's free text as the model saw it."""
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
            KeyFact(
                text=clean_text(strip_echo(fact.text, quoted, counts), vault, policy, counts),
                evidence_event_ids=evidence,
            )
        )
    summary = clean_text(strip_echo(draft.summary, quoted, counts), vault, policy, counts)
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
