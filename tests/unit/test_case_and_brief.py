"""Case assembly and the deterministic brief on the scenario's cases."""

from __future__ import annotations

import re
from typing import Any

import pytest

from streamproc.brief.fallback import NO_PATTERN_GAP, build_brief, level_for
from streamproc.brief.model import SUMMARY_MAX, CaseBrief, RiskLevel
from streamproc.contracts.schemas import SchemaSet
from streamproc.domain.case import Case, assemble_case
from streamproc.domain.window import SIGNAL, TXN, add_event, empty_window
from streamproc.sim.scenario import Scenario
from tests.conftest import ALERT_TOPIC, NOW_MS, SIG_TOPIC, TXN_TOPIC, normalized

LOOKBACK = 72 * 3_600_000
AFTER = 600_000
PLANTED_PII = [
    "4111",
    "Anna",
    "Schmidt",
    "anna.schmidt",
    "James",
    "Carter",
    "7946",
    "Ion Popescu",
    "GB82WEST",
    "198.51.100",
    "203.0.113",
    "Ignore previous",
    "Maria Lopez",
    "DE89370400",
    "Casa Pepe",
    "Rewe",
]


def build_cases(schemas: SchemaSet, sc: Scenario, *, order: int = 1) -> dict[str, Case]:
    windows: dict[str, dict[str, Any]] = {}
    events = [(TXN, r) for r in normalized(schemas, TXN_TOPIC, sc.transactions)]
    events += [(SIGNAL, r) for r in normalized(schemas, SIG_TOPIC, sc.signals)]
    for kind, rec in events[::order]:
        add_event(
            windows.setdefault(rec["account_id"], empty_window()),
            kind,
            rec,
            lookback_ms=LOOKBACK,
            max_events=500,
        )
    cases = {}
    for alert in normalized(schemas, ALERT_TOPIC, sc.alerts):
        cases[alert["case_id"]] = assemble_case(
            alert["case_id"],
            alert["account_id"],
            [alert],
            windows[alert["account_id"]],
            lookback_ms=LOOKBACK,
            after_ms=AFTER,
        )
    return cases


@pytest.fixture(scope="module")
def cases(schemas: SchemaSet, scenario: Scenario) -> dict[str, Case]:
    return build_cases(schemas, scenario)


@pytest.fixture(scope="module")
def briefs(cases: dict[str, Case]) -> dict[str, CaseBrief]:
    return {cid: build_brief(c, version=1, generated_at_ms=NOW_MS) for cid, c in cases.items()}


def test_expected_reasons_and_levels(scenario: Scenario, briefs: dict[str, CaseBrief]) -> None:
    for exp in scenario.expected:
        b = briefs[exp.case_id]
        assert exp.reason_codes <= {r.value for r in b.reason_codes}, exp.case_id
        assert RiskLevel(exp.min_level).rank <= b.risk_level.rank <= RiskLevel(exp.max_level).rank
        assert b.risk_level is level_for(b.risk_score)


def test_fraud_outranks_benign(briefs: dict[str, CaseBrief]) -> None:
    benign = briefs["case-benign-001"]
    for fraud in ("case-ct-001", "case-ato-001", "case-mule-001"):
        assert briefs[fraud].risk_score > benign.risk_score + 25
    assert "CLOSE_AS_FALSE_POSITIVE" in benign.recommended_actions
    assert "CLOSE_AS_FALSE_POSITIVE" not in briefs["case-ct-001"].recommended_actions


def test_every_evidence_id_is_an_event_of_the_case(
    cases: dict[str, Case], briefs: dict[str, CaseBrief]
) -> None:
    for cid, b in briefs.items():
        assert b.key_facts
        for fact in b.key_facts:
            assert set(fact.evidence_event_ids) <= cases[cid].event_ids
        assert {e.event_id for e in b.timeline} <= cases[cid].event_ids


def test_timeline_is_ordered_and_summary_bounded(briefs: dict[str, CaseBrief]) -> None:
    for b in briefs.values():
        times = [(e.occurred_at, e.event_id) for e in b.timeline]
        assert times == sorted(times)
        assert len(b.summary) <= SUMMARY_MAX


def test_no_free_text_or_pii_in_the_deterministic_brief(briefs: dict[str, CaseBrief]) -> None:
    for b in briefs.values():
        text = b.model_dump_json()
        for value in PLANTED_PII:
            assert value not in text, (b.case_id, value)
        prose = " ".join(
            [
                b.summary,
                *(f.text for f in b.key_facts),
                *(e.description for e in b.timeline),
                *b.data_gaps,
            ]
        )
        assert not re.search(r"\d{12,}", prose)  # nothing card- or account-number shaped


def test_brief_id_is_stable_under_arrival_order(
    schemas: SchemaSet, scenario: Scenario, cases: dict[str, Case]
) -> None:
    reversed_cases = build_cases(schemas, scenario, order=-1)
    for cid, case in cases.items():
        assert reversed_cases[cid].brief_id() == case.brief_id()
        b1 = build_brief(case, version=1, generated_at_ms=NOW_MS)
        b2 = build_brief(reversed_cases[cid], version=1, generated_at_ms=NOW_MS)
        assert b1 == b2


def test_brief_id_changes_with_content(cases: dict[str, Case]) -> None:
    case = cases["case-ct-001"]
    fewer = Case(
        case.case_id,
        case.account_id,
        case.alerts,
        case.transactions[:-1],
        case.signals,
        case.window_start_ms,
        case.window_end_ms,
        case.data_gaps,
    )
    assert fewer.brief_id() != case.brief_id()


def test_missing_alert_transactions_are_a_data_gap(schemas: SchemaSet, scenario: Scenario) -> None:
    alert = normalized(schemas, ALERT_TOPIC, scenario.alerts)[0]
    alert = {**alert, "transaction_ids": [*alert["transaction_ids"], "txn-never-came"]}
    case = assemble_case(
        alert["case_id"],
        alert["account_id"],
        [alert],
        empty_window(),
        lookback_ms=LOOKBACK,
        after_ms=AFTER,
    )
    assert any("txn-never-came" in g for g in case.data_gaps)
    assert any("no device signals" in g for g in case.data_gaps)
    brief = build_brief(case, version=1, generated_at_ms=NOW_MS)
    assert brief.confidence.value == "LOW"
    assert brief.data_gaps == [*case.data_gaps, NO_PATTERN_GAP]  # no event, so no pattern


def test_case_window_bounds(cases: dict[str, Case]) -> None:
    for case in cases.values():
        for r in (*case.transactions, *case.signals):
            assert case.window_start_ms <= r["occurred_at"] <= case.window_end_ms
