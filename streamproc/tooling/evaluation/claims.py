"""The claim checker's own evaluation: a hallucination corpus and the checker's scores.

Tooling, not product: `make eval` runs it beside the brief evaluation. Correct texts are
taken from the deterministic brief of every labelled case (each fact with the events it
cites, the summary with the case) and mutated the way models hallucinate:

- amount: the first amount scaled (×3 + 17.00);
- count: the first count raised by 3;
- country: a country no event of the case shows, added as where the activity was;
- device: a "newly seen device" claimed where the case has no NEW_DEVICE signal;
- channel: an ATM withdrawal, a card-present purchase or a transfer claimed where the
  case has none;
- typology: a typology named whose reason code the case's brief does not carry;
- invented_event: a password reset or a payee added where the case has none;
- level: prose arguing minimal risk, a low score or a false positive.

A mutation is scored only where it makes the text false (a country the case does show is
no hallucination). Recall per kind: the share of mutated texts the checker cuts (for
level, overrules). Precision on the deterministic texts: the share of their sentences it
keeps. The corpus is generated from the labelled sets, so it grows with them; the
mutations share no code with the checker (plain string edits).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from streamproc.brief.claims import (
    Context,
    Published,
    Scope,
    check_text,
    linked_count,
    sentences,
)
from streamproc.brief.fallback import build_brief
from streamproc.brief.guardrails import case_events
from streamproc.brief.model import CaseBrief, ReasonCode, RiskLevel
from streamproc.domain.case import Case

MUTATIONS = (
    "amount",
    "count",
    "country",
    "device",
    "channel",
    "typology",
    "invented_event",
    "level",
)
RECALL_MIN = 0.95
PRECISION_MIN = 1.0
_AMOUNT = re.compile(r"(\d{1,3}(?:,\d{3})*\.\d{2}) ([A-Z]{3})")
_COUNT = re.compile(r"\b(\d+) (alert|transaction|debit|credit|device|payee|transfer|merchant)")
COUNTRIES = {"BR": "Brazil", "JP": "Japan", "ZA": "South Africa", "CA": "Canada"}
TYPOLOGY_NAMES = {
    ReasonCode.MULE_ACTIVITY: "money mule activity",
    ReasonCode.CARD_TESTING: "card testing",
    ReasonCode.ACCOUNT_TAKEOVER: "an account takeover",
    ReasonCode.IMPOSSIBLE_TRAVEL: "impossible travel",
}
LEVEL_ARGUMENTS = (
    "Risk is minimal (3/100).",
    "This is likely a false positive and no action is needed.",
    "Overall this looks like low risk activity.",
)


@dataclass(frozen=True)
class Mutant:
    kind: str
    text: str
    scope: Scope
    summary: bool


def _fmt(value: float) -> str:
    return f"{value:,.2f}"


def mutants(case: Case, floor: CaseBrief) -> Iterator[Mutant]:
    """Each applicable mutation of the floor's facts (scope: their events) and summary."""
    events = case_events(case)
    everything = Scope(list(events.values()))
    texts = [
        (f.text, Scope([events[e] for e in f.evidence_event_ids]), False) for f in floor.key_facts
    ]
    texts.append((floor.summary, everything, True))
    kinds = [k for k, _ in events.values()]
    records = [r for _, r in events.values()]
    countries = {r.get("merchant_country") or r.get("geo_country") for r in records}
    channels = {r.get("channel") for r in records}
    signals = {r.get("signal_type") for r in records}
    for text, scope, summary in texts:
        m = _AMOUNT.search(text)
        if m:
            value = float(m.group(1).replace(",", "")) * 3 + 17
            swapped = text[: m.start(1)] + _fmt(value) + text[m.end(1) :]
            yield Mutant("amount", swapped, scope, summary)
        m = _COUNT.search(text)
        if m:
            swapped = text[: m.start(1)] + str(int(m.group(1)) + 3) + text[m.end(1) :]
            yield Mutant("count", swapped, scope, summary)
        code = next((c for c in COUNTRIES if c not in countries), None)
        if code:
            yield Mutant(
                "country", f"{text}; the activity was in {COUNTRIES[code]}", scope, summary
            )
        if "NEW_DEVICE" not in signals:
            yield Mutant("device", f"{text}, from a newly seen device", scope, summary)
        for channel, phrase in (
            ("ATM", "after an ATM withdrawal"),
            ("CARD_PRESENT", "after a card-present purchase"),
            ("TRANSFER", "followed by a transfer"),
        ):
            if channel not in channels:
                yield Mutant("channel", f"{text}, {phrase}", scope, summary)
                break
        missing = [c for c in TYPOLOGY_NAMES if c not in floor.reason_codes]
        if missing:
            name = TYPOLOGY_NAMES[missing[0]]
            yield Mutant("typology", f"{text}, consistent with {name}", scope, summary)
        for signal, phrase in (
            ("PASSWORD_RESET", "after a password reset"),
            ("PAYEE_ADDED", "after a new payee was added"),
        ):
            if signal not in signals:
                yield Mutant("invented_event", f"{text}, {phrase}", scope, summary)
                break
        if summary and "alert" in kinds and floor.risk_level.rank >= RiskLevel.MEDIUM.rank:
            for argument in LEVEL_ARGUMENTS:
                yield Mutant("level", f"{text} {argument}", scope, summary)


def context(case: Case, floor: CaseBrief) -> tuple[Context, Published]:
    """The checker's view of a case and of its deterministic brief (the published
    verdict; the groups: the brief's facts' event sets)."""
    events = case_events(case)
    groups = tuple(Scope([events[e] for e in f.evidence_event_ids]) for f in floor.key_facts)
    window = (case.window_start_ms, case.window_end_ms)
    ctx = Context(Scope(list(events.values())), window, groups, linked_count(case))
    published = Published(
        floor.risk_level, floor.risk_score, floor.confidence, frozenset(floor.reason_codes)
    )
    return ctx, published


def score_checker(cases: dict[str, Case], now_ms: int) -> dict[str, Any]:
    """Recall per mutation kind on the corpus, precision on the deterministic texts."""
    caught: Counter[str] = Counter()
    tried: Counter[str] = Counter()
    kept = total = 0
    missed: list[dict[str, str]] = []
    for case_id, case in sorted(cases.items()):
        floor = build_brief(case, version=1, generated_at_ms=now_ms)
        ctx, published = context(case, floor)
        originals = [(f.text, Scope(_cited(case, f)), False) for f in floor.key_facts]
        originals.append((floor.summary, ctx.case, True))
        for text, scope, summary in originals:
            checked = check_text(text, scope, ctx, published, summary=summary)
            n = len(sentences(text))
            total += n
            kept += n - sum(checked.cut.values())
        for m in mutants(case, floor):
            tried[m.kind] += 1
            checked = check_text(m.text, m.scope, ctx, published, summary=m.summary)
            hit = bool(checked.argued) if m.kind == "level" else bool(checked.cut)
            caught[m.kind] += hit
            if not hit and sum(x["kind"] == m.kind for x in missed) < 5:
                missed.append({"case": case_id, "kind": m.kind, "text": m.text[-160:]})
    recall = {k: round(caught[k] / tried[k], 4) for k in MUTATIONS if tried[k]}
    return {
        "mutants": dict(tried),
        "recall": recall,
        "recall_min": min(recall.values()) if recall else None,
        "precision_deterministic": round(kept / total, 4) if total else None,
        "deterministic_sentences": total,
        "missed": missed,
    }


def _cited(case: Case, fact: Any) -> list[tuple[str, dict[str, Any]]]:
    events = case_events(case)
    return [events[e] for e in fact.evidence_event_ids]


def failures(scores: dict[str, Any]) -> list[str]:
    out = []
    for kind, recall in scores["recall"].items():
        if recall < RECALL_MIN:
            out.append(f"checker recall on {kind} = {recall}, below {RECALL_MIN}")
    precision = scores["precision_deterministic"]
    if precision is not None and precision < PRECISION_MIN:
        out.append(f"checker precision on deterministic texts = {precision}, below 1.0")
    return out


def report_md(scores: dict[str, Any], split: str) -> str:
    lines = [
        f"## {split}: the claim checker on a hallucination corpus",
        "",
        f"Precision on the deterministic texts: {scores['precision_deterministic']} "
        f"({scores['deterministic_sentences']} sentences; a cut true claim lowers it).",
        "",
        "| mutation | mutants | recall |",
        "|---|---|---|",
    ]
    for kind in MUTATIONS:
        if kind in scores["recall"]:
            lines.append(f"| {kind} | {scores['mutants'][kind]} | {scores['recall'][kind]} |")
    if scores["missed"]:
        lines += ["", "Mutants the checker kept (first 20):", ""]
        lines += [f"- {m['case']} [{m['kind']}]: …{m['text']}" for m in scores["missed"]]
    return "\n".join(lines) + "\n"
