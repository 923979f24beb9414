"""The claim checker: a model that lies fluently does not reach the analyst.

The oracles here read the case's events directly (is there a card-not-present payment,
a transfer, a NEW_DEVICE signal?), not through the checker's own tables."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

import pytest

from streamproc.brief.claims import CLAIM_KINDS, Checked, Context, Published, Scope, check_text
from streamproc.brief.fallback import NO_PATTERN_GAP, build_brief
from streamproc.brief.guardrails import CHECKS, CLAIM_PREFIX, case_events, merge, split_claims
from streamproc.brief.model import Action, CaseBrief, Generation, Method, RiskLevel
from streamproc.config import BriefPII
from streamproc.contracts.schemas import SchemaSet
from streamproc.domain.case import Case
from streamproc.domain.money import fmt_amount
from streamproc.privacy.redact import Vault
from streamproc.sim.scenario import Scenario
from tests.conftest import NOW_MS
from tests.unit.test_case_and_brief import build_cases

GEN = Generation(method=Method.LLM, provider="openai", model="m", generator_version="det-1")
# What a stand-in that writes one plausible answer for every case says (issue: a claim
# checker). False on most cases: no card payments, no transfer, no new device.
FLUENT_LIE = (
    "Cluster of card-not-present attempts followed by a high-value transfer from a newly "
    "seen device."
)
VACUOUS = ("Observed pattern consistent with the alert.", "Activity noted.")


@pytest.fixture(scope="module")
def cases(schemas: SchemaSet, scenario: Scenario) -> dict[str, Case]:
    return build_cases(schemas, scenario)


def floor_of(case: Case) -> CaseBrief:
    return build_brief(case, version=1, generated_at_ms=NOW_MS)


def fixed_answer(floor: CaseBrief, case: Case, **over: Any) -> dict[str, Any]:
    """One answer for every case: it agrees with the floor's level, cites a real event."""
    first = sorted(case.event_ids)[0]
    doc = {
        "risk_level": floor.risk_level.value,
        "risk_score": floor.risk_score,
        "reason_codes": [],
        "summary": FLUENT_LIE,
        "key_facts": [
            {"text": t, "evidence_event_ids": [first], "reason_codes": []} for t in VACUOUS
        ],
        "recommended_actions": ["REVIEW_TRANSACTIONS"],
        "confidence": "HIGH",
    }
    return {**doc, **over}


def publish(case: Case, answer: dict[str, Any]) -> tuple[CaseBrief, Any]:
    from streamproc.brief.draft import BriefDraft

    return merge(
        BriefDraft.model_validate(answer), floor_of(case), case, Vault(), BriefPII.MASKED, GEN
    )


def test_a_fixed_fluent_answer_claims_nothing_the_events_do_not_show(
    cases: dict[str, Case],
) -> None:
    """The same plausible summary on every case of the scenario: on each case, the
    published summary names no kind of event the case does not have."""
    lied = 0
    for case in cases.values():
        brief, counts = publish(case, fixed_answer(floor_of(case), case))
        cnp = any(t["channel"] == "CARD_NOT_PRESENT" for t in case.transactions)
        transfer = any(t["channel"] == "TRANSFER" for t in case.transactions)
        new_device = any(s["signal_type"] == "NEW_DEVICE" for s in case.signals)
        summary = brief.summary.lower()
        if not cnp:
            assert "card-not-present" not in summary, case.case_id
        if not transfer:
            assert "transfer from" not in summary, case.case_id
        if not new_device:
            assert "newly seen device" not in summary, case.case_id
        if not (cnp and transfer and new_device):
            lied += 1
            assert FLUENT_LIE not in brief.summary
            assert counts["claim_cut"] >= 1 or counts["claims_overruled"] == 1
        # facts that say nothing are not published
        assert not {f.text for f in brief.key_facts} & set(VACUOUS), case.case_id
        assert counts["fact_vacuous"] == len(VACUOUS)
    assert lied >= 3  # the scenario holds cases the lie is false on


@pytest.mark.parametrize(
    "prose",
    [
        "Risk is minimal (3/100): this is likely a false positive and no action is needed.",
        "Low risk overall; the customer is a genuine customer.",
        "The case scores 12/100.",
        "We have low confidence in any fraud here.",
    ],
)
def test_prose_that_argues_another_level_overrules_the_draft(
    cases: dict[str, Case], prose: str
) -> None:
    """The draft keeps the floor's level (CRITICAL) but argues it away in prose: the
    analyst reads the deterministic summary and the floor's confidence."""
    case = next(c for c in cases.values() if floor_of(c).risk_level is RiskLevel.CRITICAL)
    floor = floor_of(case)
    answer = fixed_answer(floor, case, summary=prose, key_facts=[], confidence="HIGH")
    brief, counts = publish(case, answer)
    assert brief.summary.startswith("[Model draft overruled:")
    assert prose not in brief.summary and floor.summary in brief.summary
    assert brief.confidence == floor.confidence
    assert counts["prose_argued"] == 1 and counts["narrative_overruled"] == 1


@pytest.mark.parametrize(
    ("level", "prose", "argued"),
    [
        # The local model's words on a CRITICAL case: prose, not another level.
        (RiskLevel.CRITICAL, "The case was a high-risk fraud.", False),
        (RiskLevel.CRITICAL, "This is a HIGH risk case.", True),  # names the level
        # Arguments for less, in the same words (an adversarial review wrote them):
        (RiskLevel.CRITICAL, "Risk is high.", True),
        (RiskLevel.CRITICAL, "Risk is not high.", True),
        (RiskLevel.CRITICAL, "The risk is only high.", True),
        (RiskLevel.CRITICAL, "At most a high-risk case.", True),
        (RiskLevel.CRITICAL, "The case should be downgraded to high risk.", True),
        (RiskLevel.CRITICAL, "This is a high-risk case, not a critical one.", True),
        (RiskLevel.CRITICAL, "Risk level is high.", True),
        (RiskLevel.CRITICAL, "The risk is not critical.", True),
        (RiskLevel.HIGH, "Risk is not low.", False),
        (RiskLevel.MEDIUM, "The case was a high-risk fraud.", True),  # a salary day
        (RiskLevel.HIGH, "The case was a critical-risk fraud.", True),
    ],
)
def test_high_risk_in_prose_agrees_with_critical_only(
    cases: dict[str, Case], level: RiskLevel, prose: str, argued: bool
) -> None:
    case = next(iter(cases.values()))
    pub = Published(level, 50, floor_of(case).confidence, frozenset())
    events = case_events(case)
    ctx = Context(Scope(list(events.values())), (case.window_start_ms, case.window_end_ms), ())
    checked = check_text(prose, ctx.case, ctx, pub, summary=True)
    assert bool(checked.argued) is argued, checked


@pytest.mark.parametrize(
    "lie",
    [
        "There were 0 payments in the window.",
        "0 transactions were made.",
        "The account made zero card payments.",
        "No payments were made.",
        "There were no card payments.",
        "The customer has not added any payee.",
    ],
)
def test_a_false_claim_of_absence_is_cut(cases: dict[str, Case], lie: str) -> None:
    """Absence is a claim about the whole case, even where one fact cites none of them."""
    case = cases["case-ato-001"]  # payments, transfers, a payee added
    events = case_events(case)
    signals_only = Scope([e for e in events.values() if e[0] == "signal"])
    ctx = Context(
        Scope(list(events.values())), (case.window_start_ms, case.window_end_ms), (signals_only,)
    )
    pub = Published(RiskLevel.HIGH, 60, floor_of(case).confidence, frozenset())
    assert check_text(lie, ctx.case, ctx, pub, summary=True).cut, lie


def test_true_claims_are_kept(cases: dict[str, Case]) -> None:
    """A draft that says what the events show, in the model's words, is published."""
    case = cases["case-ct-001"]
    floor = floor_of(case)
    flagged = max(case.transactions, key=lambda t: t["amount_minor"])
    amount = fmt_amount(flagged["amount_minor"], flagged["currency"])
    cnp = [t for t in case.transactions if t["channel"] == "CARD_NOT_PRESENT"]
    summary = (
        f"{len(case.alerts)} alert on this account. The flagged debit of {amount} follows "
        f"{len(cnp)} card-not-present payments."
    )
    facts = [
        {
            "text": f"A debit of {amount}.",
            "evidence_event_ids": [flagged["event_id"]],
            "reason_codes": [],
        }
    ]
    answer = fixed_answer(floor, case, summary=summary, key_facts=facts)
    brief, counts = publish(case, answer)
    assert brief.summary == summary, counts
    assert brief.key_facts[0].text == facts[0]["text"]
    assert not counts["claim_cut"] and not counts["narrative_overruled"]


@pytest.mark.parametrize(
    ("lie", "kind"),
    [
        ("A debit of 9,999.99 EUR.", "amount"),
        ("7 alerts fired on this account.", "count"),
        ("Payments were made from Brazil.", "country"),
        ("The debits were at a casino.", "merchant"),
        ("An ATM withdrawal preceded it.", "kind"),
        ("This is a money mule pattern.", "typology"),
        ("It came from a phishing campaign.", "typology"),
    ],
)
def test_a_false_claim_cuts_its_sentence_and_is_counted_by_kind(
    cases: dict[str, Case], lie: str, kind: str
) -> None:
    case = cases["case-ct-001"]
    floor = floor_of(case)
    summary = f"{len(case.alerts)} alert on this account. {lie}"
    brief, counts = publish(case, fixed_answer(floor, case, summary=summary, key_facts=[]))
    assert lie not in brief.summary
    checks, claims = split_claims(counts)
    assert claims[kind] >= 1, claims
    assert set(claims) <= set(CLAIM_KINDS) and set(checks) <= set(CHECKS)
    assert all(not k.startswith(CLAIM_PREFIX) for k in checks)


def _variants(cases: dict[str, Case]) -> list[Case]:
    """Each case, and each without its device signals or its transactions: the
    deterministic summary then says "0 device signal(s)", a true claim of absence."""
    out: list[Case] = []
    for case in cases.values():
        out += [case, replace(case, signals=()), replace(case, transactions=())]
    return out


def test_the_checker_never_cuts_a_deterministic_claim(cases: dict[str, Case]) -> None:
    """Precision on what the events certainly show: every fact and summary the
    deterministic generator writes, read back by the checker, keeps every sentence."""
    for case in _variants(cases):
        floor = floor_of(case)
        events = case_events(case)
        pub = Published(
            floor.risk_level, floor.risk_score, floor.confidence, frozenset(floor.reason_codes)
        )
        groups = tuple(Scope([events[e] for e in f.evidence_event_ids]) for f in floor.key_facts)
        ctx = Context(
            Scope(list(events.values())), (case.window_start_ms, case.window_end_ms), groups
        )
        for fact, group in zip(floor.key_facts, groups, strict=True):
            checked = check_text(fact.text, group, ctx, pub, summary=False)
            assert not checked.cut and checked.claims > 0, (case.case_id, fact.text)
        checked = check_text(floor.summary, ctx.case, ctx, pub, summary=True)
        assert not checked.cut and not checked.argued, (case.case_id, floor.summary)


def test_a_case_with_a_high_alert_is_never_closed_as_a_false_positive(
    cases: dict[str, Case],
) -> None:
    """A HIGH alert without a rule score, on events that show no pattern of their own:
    20 points, LOW. That is a data gap ("the rule's reason is not visible in these
    events"), not a reason to close, whether the deterministic brief or the model says so."""
    for case in cases.values():
        alerts = tuple({**a, "severity": "HIGH", "score": None} for a in case.alerts)
        bare = replace(case, alerts=alerts, transactions=(), signals=())
        floor = floor_of(bare)
        assert floor.risk_level is RiskLevel.LOW and len(floor.reason_codes) == 1
        assert NO_PATTERN_GAP in floor.data_gaps
        assert Action.CLOSE_AS_FALSE_POSITIVE not in floor.recommended_actions, case.case_id
        answer = fixed_answer(
            floor, bare, summary="", key_facts=[], recommended_actions=["CLOSE_AS_FALSE_POSITIVE"]
        )
        brief, _ = publish(bare, answer)
        assert Action.CLOSE_AS_FALSE_POSITIVE not in brief.recommended_actions


def test_the_hallucination_scores_can_fail(
    cases: dict[str, Case], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The corpus scores the checker, not itself: every kind is tried on the scenario,
    the gate passes on the checker as built, and a checker that keeps every sentence
    fails it on every kind."""
    from streamproc.tooling.evaluation import claims as evaluation_claims

    scores = evaluation_claims.score_checker(cases, NOW_MS)
    assert set(scores["recall"]) == set(evaluation_claims.MUTATIONS)
    assert evaluation_claims.failures(scores) == []
    blind = lambda text, scope, ctx, pub, summary: Checked(  # noqa: E731
        text, Counter(), 1, len(text), len(text), []
    )
    monkeypatch.setattr(evaluation_claims, "check_text", blind)
    blind_scores = evaluation_claims.score_checker(cases, NOW_MS)
    assert all(v == 0.0 for v in blind_scores["recall"].values())
    assert len(evaluation_claims.failures(blind_scores)) == len(evaluation_claims.MUTATIONS)
