"""Analysts' feedback joined with the brief's provenance in state, on plain dicts.

The expected figures are written out from the brief the harness published and the
feedback sent, not computed with the code under test."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import generate_latest

from streamproc.contracts.codec import AvroCodec
from streamproc.contracts.records import from_json
from streamproc.engine import feedback
from streamproc.engine.dlq import InMessage
from streamproc.errors import EventValidationError
from streamproc.sim.scenario import Scenario
from tests.conftest import ALERT_TOPIC, FEEDBACK_TOPIC, SIG_TOPIC, TXN_TOPIC
from tests.unit.test_processor import SETTLE, Harness, _account


@pytest.fixture()
def h(codec: AvroCodec) -> Harness:
    return Harness(codec)


def _briefed(h: Harness, scenario: Scenario, account: str) -> Any:
    txns, sigs, alerts = _account(scenario, account)
    h.send(TXN_TOPIC, txns)
    h.send(SIG_TOPIC, sigs)
    h.send(ALERT_TOPIC, alerts)
    h.clock.now += SETTLE
    [brief] = h.settle()
    return brief


def _feedback(brief: Any, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": f"fb-{brief.brief_id[:8]}",
        "brief_id": brief.brief_id,
        "brief_version": brief.brief_version,
        "case_id": brief.case_id,
        "account_id": brief.account_id,
        "decided_at": "2026-11-30T10:00:00Z",
        "analyst_id": "analyst-7f3a",
        "disposition": "CONFIRMED_FRAUD",
        **fields,
    }


def test_feedback_is_counted_against_the_published_briefs_provenance(
    h: Harness, scenario: Scenario
) -> None:
    brief = _briefed(h, scenario, "acct-ct-001")
    assert brief.risk_level.value == "CRITICAL"
    assert "CARD_TESTING" in {c.value for c in brief.reason_codes}
    assert "MULE_ACTIVITY" not in {c.value for c in brief.reason_codes}
    n_facts = len(brief.key_facts)
    sent = _feedback(
        brief,
        disposition="FALSE_POSITIVE",
        usefulness=2,
        reason_codes_added=["MULE_ACTIVITY", "CARD_TESTING"],  # CARD_TESTING: already there
        reason_codes_removed=["CARD_TESTING", "NEW_PAYEE"],  # NEW_PAYEE: never there
        facts_flagged=[0, n_facts + 5],  # the second is no fact of this brief
    )
    assert h.send(FEEDBACK_TOPIC, [sent]) == []
    prov = {"method": "FALLBACK", "model": "none", "prompt_version": "none", "variant": "primary"}
    assert h.count("streamproc_feedback_received_total", **prov) == 1
    assert h.count("streamproc_feedback_usefulness_sum", **prov) == 2
    assert h.count("streamproc_feedback_usefulness_count", **prov) == 1
    assert h.count("streamproc_feedback_agreement_total", **prov, agrees="false") == 1
    method = {"method": "FALLBACK", "variant": "primary"}
    assert (
        h.count(
            "streamproc_feedback_dispositions_total",
            risk_level="CRITICAL",
            disposition="FALSE_POSITIVE",
            **method,
        )
        == 1
    )
    added = "streamproc_feedback_reason_codes_total"
    assert h.count(added, change="added", code="MULE_ACTIVITY", **method) == 1
    assert h.count(added, change="added", code="CARD_TESTING", **method) == 0
    assert h.count(added, change="removed", code="CARD_TESTING", **method) == 1
    assert h.count(added, change="removed", code="NEW_PAYEE", **method) == 0
    assert h.count("streamproc_feedback_facts_flagged_sum", **method) == 1
    assert h.count("streamproc_events_consumed_total", topic=FEEDBACK_TOPIC) == 1


def test_feedback_on_a_brief_not_in_state_is_counted_as_unknown(h: Harness) -> None:
    h.send(
        FEEDBACK_TOPIC,
        [
            {
                "event_id": "fb-1",
                "brief_id": "00000000-0000-5000-8000-000000000000",
                "brief_version": 1,
                "case_id": "case-gone",
                "account_id": "acct-gone",
                "decided_at": 1_764_496_800_000,
                "analyst_id": "a-1",
                "disposition": "ESCALATED",
                "usefulness": 5,
            }
        ],
    )
    unknown = dict.fromkeys(("method", "model", "prompt_version", "variant"), "unknown")
    assert h.count("streamproc_feedback_received_total", **unknown) == 1
    assert h.count("streamproc_feedback_usefulness_count", **unknown) == 0


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"usefulness": 7}, "usefulness must be between 1 and 5"),
        ({"usefulness": 0}, "usefulness must be between 1 and 5"),
        ({"analyst_id": "Jane Doe"}, "analyst_id must be a pseudonymous id"),
        ({"analyst_id": "jane@bank.example"}, "analyst_id must be a pseudonymous id"),
        ({"facts_flagged": [-1]}, "facts_flagged holds an index outside"),
    ],
)
def test_feedback_breaking_the_contract_is_refused_by_publish_and_dead_lettered(
    h: Harness, scenario: Scenario, fields: dict[str, Any], reason: str
) -> None:
    brief = _briefed(h, scenario, "acct-ct-001")
    schema = h.codec.schemas.for_topic(FEEDBACK_TOPIC)
    with pytest.raises(EventValidationError, match=reason):  # `streamproc publish`
        from_json(schema, _feedback(brief, **fields))
    # A producer that skips the contract: valid Avro, so only the worker can refuse it.
    record = {**from_json(schema, _feedback(brief)), **fields}
    value = h.codec.encode(FEEDBACK_TOPIC, record)
    out = h.p.on_input(InMessage(FEEDBACK_TOPIC, 0, 99, b"acct-ct-001", value, []))
    assert out is not None and out.topic == "fraud.dlq.v1"
    assert reason in dict(out.headers)["__connect.errors.exception.message"].decode()
    prov = {"method": "FALLBACK", "model": "none", "prompt_version": "none", "variant": "primary"}
    assert h.count("streamproc_feedback_received_total", **prov) == 0


def test_feedback_that_is_not_avro_of_its_schema_is_dead_lettered(h: Harness) -> None:
    out = h.p.on_input(InMessage(FEEDBACK_TOPIC, 0, 1, b"acct-1", b"\x00\x00\x00\x00\x07xx", []))
    assert out is not None and out.topic == "fraud.dlq.v1"
    assert (
        h.count("streamproc_events_rejected_total", topic=FEEDBACK_TOPIC, reason="unknown_schema")
        == 1
    )


@pytest.mark.parametrize(
    ("disposition", "assessed", "published", "expected"),
    [
        ("CONFIRMED_FRAUD", None, "HIGH", True),
        ("CONFIRMED_FRAUD", None, "CRITICAL", True),
        ("CONFIRMED_FRAUD", None, "MEDIUM", False),
        ("FALSE_POSITIVE", None, "LOW", True),
        ("FALSE_POSITIVE", None, "MEDIUM", True),
        ("FALSE_POSITIVE", None, "HIGH", False),
        ("INCONCLUSIVE", None, "HIGH", None),
        ("ESCALATED", None, "LOW", None),
        ("FALSE_POSITIVE", "HIGH", "HIGH", True),  # their own level wins
        ("CONFIRMED_FRAUD", "MEDIUM", "CRITICAL", False),
    ],
)
def test_agreement(
    disposition: str, assessed: str | None, published: str, expected: bool | None
) -> None:
    got = feedback.agrees({"disposition": disposition, "risk_level_assessed": assessed}, published)
    assert got is expected


def test_a_case_keeps_the_provenance_of_its_latest_briefs_only(
    h: Harness, scenario: Scenario
) -> None:
    brief = _briefed(h, scenario, "acct-ct-001")
    case: dict[str, Any] = {}
    for i in range(feedback.BRIEFS_KEPT + 3):
        feedback.remember(case, brief.model_copy(update={"brief_id": f"b-{i}"}))
    assert list(case["briefs"]) == [f"b-{i}" for i in range(3, feedback.BRIEFS_KEPT + 3)]


def test_no_analyst_text_or_id_reaches_a_metric(h: Harness, scenario: Scenario) -> None:
    brief = _briefed(h, scenario, "acct-ct-001")
    planted = "Call Jane Roe on +44 20 7946 0958 zq7-canary"
    h.send(FEEDBACK_TOPIC, [_feedback(brief, comment=planted, analyst_id="analyst-zq7x")])
    exposition = generate_latest(h.metrics.registry)
    for value in (planted, "zq7-canary", "Jane Roe", "analyst-zq7x", brief.brief_id, brief.case_id):
        assert value.encode() not in exposition
