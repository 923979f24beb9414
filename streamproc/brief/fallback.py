"""The deterministic brief: computed from the events alone, the LLM's fallback and risk floor.

Same case in, same brief out (generated_at and version aside). It writes only from
controlled fields (amounts, codes, enums, ids): never free text, never PII.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from streamproc.brief.model import (
    SUMMARY_MAX,
    Action,
    CaseBrief,
    CaseCounts,
    Confidence,
    Disposition,
    EventKind,
    Generation,
    KeyFact,
    LinkedAccount,
    Method,
    ReasonCode,
    RiskLevel,
    SharedEntity,
    TimelineEntry,
)
from streamproc.contracts.records import iso
from streamproc.domain.case import Case, Record
from streamproc.domain.features import Finding, alert_transactions, find_all
from streamproc.domain.money import fmt_amount
from streamproc.network.links import Assessed
from streamproc.network.links import assess as assess_links

DISPOSITIONS = frozenset(d.value for d in Disposition)

GENERATOR_VERSION = "det-1"
TIMELINE_MAX = 200
DEVICE_FACTS_MAX = 2  # flagged transactions whose device is described
DEVICE_CHANGES_MAX = 3  # credential/device changes named per device
SEVERE = frozenset({"HIGH", "CRITICAL"})  # alert severities a case is never closed on
NO_PATTERN_GAP = "the rule's reason is not visible in these events"
NO_PATTERN = "only the rule hit: the events show no pattern of their own"
CHANGES = frozenset({"PASSWORD_RESET", "PROFILE_CHANGE", "NEW_DEVICE", "MFA_FAILED", "PAYEE_ADDED"})

SEVERITY_POINTS = {"LOW": 5, "MEDIUM": 10, "HIGH": 20, "CRITICAL": 30}
ALERT_SCORE_POINTS = 10  # × the rule's own score (0..1)
REASON_POINTS = {
    ReasonCode.CARD_TESTING: 40,
    ReasonCode.ACCOUNT_TAKEOVER: 40,
    ReasonCode.MULE_ACTIVITY: 40,
    ReasonCode.IMPOSSIBLE_TRAVEL: 25,
    ReasonCode.VELOCITY_SPIKE: 15,
    ReasonCode.HIGH_AMOUNT: 15,
    ReasonCode.DEVICE_RISK: 15,
    ReasonCode.NEW_DEVICE: 10,
    ReasonCode.NEW_PAYEE: 10,
    ReasonCode.GEO_MISMATCH: 10,
    ReasonCode.MERCHANT_RISK: 10,
    ReasonCode.LINKED_TO_CONFIRMED_FRAUD: 30,
    ReasonCode.LINKED_ACCOUNTS: 20,
}
# Links raise the floor to at least this level, whatever the points say (SPEC: a link to
# an account an analyst confirmed as fraud is at least HIGH; docs/contract.md the rest).
LINK_FLOOR_SCORE = {ReasonCode.LINKED_TO_CONFIRMED_FRAUD: 50, ReasonCode.LINKED_ACCOUNTS: 25}
LEVEL_FLOORS = ((75, RiskLevel.CRITICAL), (50, RiskLevel.HIGH), (25, RiskLevel.MEDIUM))
STRONG = frozenset(
    {
        ReasonCode.CARD_TESTING,
        ReasonCode.ACCOUNT_TAKEOVER,
        ReasonCode.MULE_ACTIVITY,
        ReasonCode.IMPOSSIBLE_TRAVEL,
    }
)
ACTIONS_FOR = {
    ReasonCode.CARD_TESTING: (Action.BLOCK_CARD,),
    ReasonCode.ACCOUNT_TAKEOVER: (
        Action.VERIFY_DEVICE,
        Action.CONTACT_CUSTOMER,
        Action.HOLD_PENDING_REVIEW,
    ),
    ReasonCode.MULE_ACTIVITY: (
        Action.ESCALATE_AML,
        Action.HOLD_PENDING_REVIEW,
        Action.REQUEST_DOCUMENTS,
    ),
    ReasonCode.IMPOSSIBLE_TRAVEL: (Action.CONTACT_CUSTOMER,),
    ReasonCode.DEVICE_RISK: (Action.VERIFY_DEVICE,),
    ReasonCode.NEW_DEVICE: (Action.VERIFY_DEVICE,),
    ReasonCode.NEW_PAYEE: (Action.CONTACT_CUSTOMER,),
    ReasonCode.LINKED_TO_CONFIRMED_FRAUD: (Action.HOLD_PENDING_REVIEW,),
}


@dataclass(frozen=True)
class Assessment:
    """The deterministic verdict on a case: what the LLM may raise but never lower."""

    score: int
    level: RiskLevel
    reasons: tuple[ReasonCode, ...]
    findings: tuple[Finding, ...]
    confidence: Confidence
    actions: tuple[Action, ...]
    links: Assessed | None = None


def level_for(score: int) -> RiskLevel:
    return next((lvl for floor, lvl in LEVEL_FLOORS if score >= floor), RiskLevel.LOW)


def assess(case: Case, failed: list[str] | None = None) -> Assessment:
    """`failed`: collects the names of detectors that raised (see features.find_all)."""
    findings = tuple(find_all(case, failed))
    links = None
    if case.links:
        links = assess_links(case.links, case.family, case.alerts[-1]["occurred_at"])
        findings += tuple(_link_findings(links))
    top = max(case.alerts, key=lambda a: SEVERITY_POINTS[a["severity"]])
    score = SEVERITY_POINTS[top["severity"]]
    score += round(ALERT_SCORE_POINTS * max((a.get("score") or 0.0) for a in case.alerts))
    score += sum(REASON_POINTS.get(f.reason, 0) for f in findings)
    score = min(score, 100)
    for f in findings:
        score = max(score, LINK_FLOOR_SCORE.get(f.reason, 0))
    level = level_for(score)
    reasons = (*(f.reason for f in findings), ReasonCode.RULE_HIT)
    severe = any(a["severity"] in SEVERE for a in case.alerts)
    return Assessment(
        score,
        level,
        reasons,
        findings,
        _confidence(case, findings),
        _actions(level, reasons, severe),
        links,
    )


def _link_findings(links: Assessed) -> list[Finding]:
    """One finding per reason: the texts of its entities joined, their evidence merged."""
    out = []
    for confirmed, code in (
        (True, ReasonCode.LINKED_TO_CONFIRMED_FRAUD),
        (False, ReasonCode.LINKED_ACCOUNTS),
    ):
        these = [f for f in links.findings if f.confirmed is confirmed]
        if these:
            evidence = tuple(dict.fromkeys(e for f in these for e in f.evidence))
            out.append(Finding(code, "; ".join(f.text for f in these), evidence))
    return out


def _confidence(case: Case, findings: Iterable[Finding]) -> Confidence:
    missing_named = any("named by the alert" in g for g in case.data_gaps)
    if missing_named or len(case.transactions) + len(case.signals) < 3:
        return Confidence.LOW
    if any(f.reason in STRONG for f in findings) and not case.data_gaps:
        return Confidence.HIGH
    return Confidence.MEDIUM


def _actions(
    level: RiskLevel, reasons: Iterable[ReasonCode], severe: bool = False
) -> tuple[Action, ...]:
    """`severe`: the case holds a HIGH or CRITICAL alert of the bank's rules, which is
    never closed as a false positive on the events' word."""
    chosen = {Action.REVIEW_TRANSACTIONS}
    for reason in reasons:
        chosen.update(ACTIONS_FOR.get(reason, ()))
    if level.rank >= RiskLevel.HIGH.rank:
        chosen.add(Action.HOLD_PENDING_REVIEW)
    if level is RiskLevel.LOW and not (set(reasons) & STRONG) and not severe:
        chosen.add(Action.CLOSE_AS_FALSE_POSITIVE)
    return tuple(a for a in Action if a in chosen)  # enum order is the priority order


def build_brief(
    case: Case,
    *,
    version: int,
    generated_at_ms: int,
    fallback_reason: str | None = None,
    failed: list[str] | None = None,
) -> CaseBrief:
    """The complete deterministic brief for a case, for any contract-valid case. A
    detector that fails becomes a data gap; its name is appended to `failed`."""
    failed = [] if failed is None else failed
    a = assess(case, failed)
    facts = [
        _alert_fact(case),
        *_device_facts(case),
        *(KeyFact(text=f.text, evidence_event_ids=list(f.evidence)) for f in a.findings),
        *(
            KeyFact(text=text, evidence_event_ids=list(evidence))
            for text, evidence in (a.links.context if a.links else ())
        ),
    ]
    return CaseBrief(
        brief_id=case.brief_id(),
        brief_version=version,
        case_id=case.case_id,
        account_id=case.account_id,
        alert_ids=case.alert_ids,
        generated_at=generated_at_ms,
        window_start=case.window_start_ms,
        window_end=case.window_end_ms,
        risk_level=a.level,
        risk_score=a.score,
        reason_codes=list(dict.fromkeys(a.reasons)),
        summary=_summary(case, a),
        key_facts=facts,
        timeline=_timeline(case, a),
        recommended_actions=list(a.actions),
        confidence=a.confidence,
        data_gaps=list(case.data_gaps)
        + ([] if a.findings else [NO_PATTERN_GAP])
        + _timeline_gap(case)
        + [f"detector {name} failed on this case; its pattern was not checked" for name in failed],
        generation=Generation(
            method=Method.FALLBACK,
            fallback_reason=fallback_reason,
            generator_version=GENERATOR_VERSION,
        ),
        redaction={},
        counts=CaseCounts(
            transactions=len(case.transactions),
            device_signals=len(case.signals),
            alerts=len(case.alerts),
        ),
        linked_accounts=_linked_accounts(a.links),
    )


def _linked_accounts(links: Assessed | None) -> list[LinkedAccount]:
    if links is None:
        return []
    return [
        LinkedAccount(
            account_id=v.account_id,
            entity_kind=SharedEntity(v.entity_kind.value.upper()),
            case_ids=list(v.case_ids),
            disposition=Disposition(v.disposition) if v.disposition in DISPOSITIONS else None,
            disposition_at=v.disposition_at if v.disposition in DISPOSITIONS else None,
            household=v.household,
            evidence_event_ids=list(v.evidence),
        )
        for v in links.accounts
    ]


def _alert_fact(case: Case) -> KeyFact:
    """The rule hit, citing the alerts and the transactions they name (those in the case)."""
    rules = sorted({f"{a['rule_id']} ({a['severity']})" for a in case.alerts})
    named = alert_transactions(case)
    text = f"{len(case.alerts)} alert(s) raised by rule(s) {', '.join(rules)}"
    if named:
        text += f" on {len(named)} transaction(s)"
    return KeyFact(
        text=text,
        evidence_event_ids=[a["event_id"] for a in case.alerts] + [t["event_id"] for t in named],
    )


def _device_facts(case: Case) -> list[KeyFact]:
    """Where each flagged transaction was made from, when it names a device the case has
    seen signed in before it: in a dispute, the customer's own device and session are
    what the analyst needs; in a takeover, a device first seen minutes earlier. The
    device is named by the events cited, not by its id (producers put what they have
    into ids, personal data included)."""
    facts = []
    for t in alert_transactions(case)[:DEVICE_FACTS_MAX]:
        device = t.get("device_id")
        before = [
            s
            for s in case.signals
            if device and s["device_id"] == device and s["occurred_at"] <= t["occurred_at"]
        ]
        if not before:
            continue
        last = before[-1]
        since = min(
            r["occurred_at"]
            for r in (*case.signals, *case.transactions)
            if r.get("device_id") == device
        )
        changes = [s for s in before if s["signal_type"] in CHANGES][-DEVICE_CHANGES_MAX:]
        text = (
            f"flagged {fmt_amount(t['amount_minor'], t['currency'])} "
            f"{t['channel'].lower().replace('_', '-')} payment made on the device of the "
            f"{last['signal_type']} from {last.get('geo_country') or 'an unknown country'} "
            f"{_ago(t['occurred_at'] - last['occurred_at'])} before it; the device has been "
            f"in use on this account since {iso(since)}"
        )
        if changes:
            text += "; before the payment it reported " + ", ".join(
                f"{s['signal_type']} {_ago(t['occurred_at'] - s['occurred_at'])} earlier"
                for s in changes
            )
        cited = {s["event_id"]: s for s in (*changes, last)}
        facts.append(
            KeyFact(
                text=text,
                evidence_event_ids=[
                    *(s["event_id"] for s in sorted(cited.values(), key=_order)),
                    t["event_id"],
                ],
            )
        )
    return facts


def _order(r: Record) -> tuple[int, str]:
    return (r["occurred_at"], r["event_id"])


def _ago(ms: int) -> str:
    minutes = ms // 60_000
    return f"{minutes} min" if minutes < 120 else f"{minutes // 60} h"


def _summary(case: Case, a: Assessment) -> str:
    patterns = "; ".join(f.text for f in a.findings) or NO_PATTERN
    text = (
        f"{a.level} risk ({a.score}/100) on account {case.account_id}: {patterns}. "
        f"{len(case.alerts)} alert(s), {len(case.transactions)} transaction(s) and "
        f"{len(case.signals)} device signal(s) between {iso(case.window_start_ms)} and "
        f"{iso(case.window_end_ms)}. Suggested for review: "
        f"{', '.join(x.value for x in a.actions)}."
    )
    if case.data_gaps:
        text += f" Data gaps: {len(case.data_gaps)}."
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 1] + "…"


def describe(kind: EventKind, r: Record) -> str:
    """One line per event from controlled fields only."""
    if kind is EventKind.TRANSACTION:
        where = f" MCC {r['merchant_category_code']}" if r.get("merchant_category_code") else ""
        country = f" in {r['merchant_country']}" if r.get("merchant_country") else ""
        return (
            f"{r['direction']} {fmt_amount(r['amount_minor'], r['currency'])} "
            f"{r['channel']}{where}{country}: {r['status']}"
        )
    if kind is EventKind.DEVICE_SIGNAL:
        flags = [
            x for x, on in (("emulator", r.get("is_emulator")), ("VPN", r.get("is_vpn"))) if on
        ]
        geo = f" from {r['geo_country']}" if r.get("geo_country") else ""
        extra = f" [{', '.join(flags)}]" if flags else ""
        return f"{r['signal_type']} on device {r['device_id']}{geo}{extra}"
    return f"alert {r['alert_id']} rule {r['rule_id']} severity {r['severity']}"


def _entries(case: Case) -> list[tuple[EventKind, Record]]:
    items = [(EventKind.ALERT, r) for r in case.alerts]
    items += [(EventKind.TRANSACTION, r) for r in case.transactions]
    items += [(EventKind.DEVICE_SIGNAL, r) for r in case.signals]
    return items


def _timeline(case: Case, a: Assessment) -> list[TimelineEntry]:
    items = _entries(case)
    if len(items) > TIMELINE_MAX:
        keep = {e for f in a.findings for e in f.evidence} | {r["event_id"] for r in case.alerts}
        keep |= {t["event_id"] for t in alert_transactions(case)}
        ranked = sorted(
            items, key=lambda it: (it[1]["event_id"] not in keep, -it[1]["occurred_at"])
        )
        items = ranked[:TIMELINE_MAX]
    items.sort(key=lambda it: (it[1]["occurred_at"], it[1]["event_id"]))
    return [
        TimelineEntry(
            occurred_at=r["occurred_at"], event_id=r["event_id"], kind=k, description=describe(k, r)
        )
        for k, r in items
    ]


def _timeline_gap(case: Case) -> list[str]:
    total = len(case.alerts) + len(case.transactions) + len(case.signals)
    if total <= TIMELINE_MAX:
        return []
    return [f"timeline shows {TIMELINE_MAX} of {total} events (evidence and most recent first)"]
