"""Analysts' decisions become labelled evaluation rows (`streamproc feedback export`):
the label is written from the decision, the events are redacted, and the evaluation
holds the deterministic briefs to what analysts decided.

Expected labels are written out from the decision and the brief by hand; PII is looked
for in the bytes written, as planted by the scenario."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from streamproc.cli import feedback as export
from streamproc.config import Settings
from streamproc.contracts.codec import AvroCodec
from streamproc.contracts.schemas import SchemaSet
from streamproc.privacy.redact import Redactor
from streamproc.sim.scenario import Scenario
from streamproc.tooling.evaluation.cli import evaluate
from tests.unit.test_feedback import _briefed, _feedback
from tests.unit.test_processor import Harness

PLANTED = ["Anna Schmidt", "anna.schmidt@example.com", "4111111111111111", "4111 1111 1111 1111"]


@pytest.fixture()
def h(codec: AvroCodec) -> Harness:
    return Harness(codec)


def _events(scenario: Scenario) -> dict[str, list[dict[str, Any]]]:
    return {
        "transactions": scenario.transactions,
        "device_signals": scenario.signals,
        "alerts": scenario.alerts,
    }


def test_a_decision_becomes_a_label_and_the_cases_events_redacted(
    h: Harness, scenario: Scenario, schemas: SchemaSet, tmp_path: Path
) -> None:
    ct = _briefed(h, scenario, "acct-ct-001")
    ato = _briefed(h, scenario, "acct-ato-001")
    ct_json, ato_json = ct.model_dump(mode="json"), ato.model_dump(mode="json")
    assert [c.value for c in ct.reason_codes][:2] == ["CARD_TESTING", "VELOCITY_SPIKE"]
    decisions = [
        _feedback(ct, disposition="CONFIRMED_FRAUD", decided_at=1_000),  # superseded below
        _feedback(
            ct,
            disposition="FALSE_POSITIVE",
            decided_at=2_000,
            reason_codes_removed=["VELOCITY_SPIKE"],
            reason_codes_added=["MERCHANT_RISK"],
            facts_flagged=[0],
        ),
        _feedback(ato, disposition="CONFIRMED_FRAUD", risk_level_assessed="HIGH"),
        _feedback(ato, disposition="INCONCLUSIVE", case_id="case-other", decided_at=5_000),
        {**_feedback(ct, disposition="CONFIRMED_FRAUD"), "brief_id": "gone", "case_id": "c-9"},
    ]
    out = export.labelled_set(
        decisions, [ct_json, ato_json], _events(scenario), Redactor.for_inputs(schemas)
    )
    assert out.skipped == {"disposition INCONCLUSIVE": 1, "brief not on its topic": 1}
    labels = {label.case_id: label for label in out.labels}
    assert set(labels) == {ct.case_id, ato.case_id}

    ct_label = labels[ct.case_id]  # the later decision (FALSE_POSITIVE) wins
    expected_codes = [c.value for c in ct.reason_codes if c.value != "VELOCITY_SPIKE"]
    assert ct_label.reason_codes == [*expected_codes, "MERCHANT_RISK"]
    assert (ct_label.min_level, ct_label.max_level) == ("LOW", "MEDIUM")
    assert ct_label.kind == "analyst_false_positive" and ct_label.fraud is False
    unflagged = [e for f in ct.key_facts[1:] for e in f.evidence_event_ids]
    assert ct_label.must_cite == list(dict.fromkeys(unflagged))
    ato_label = labels[ato.case_id]  # the analyst's own level
    assert (ato_label.min_level, ato_label.max_level) == ("HIGH", "HIGH")

    export.write(out, tmp_path, {"source": "test"})
    written = "".join(p.read_text() for p in tmp_path.iterdir())
    for value in PLANTED:
        assert value not in written
    mine = [e for e in scenario.transactions if e["account_id"] == "acct-ct-001"]
    rows = (tmp_path / "transactions.jsonl").read_text().splitlines()
    in_window = [e for e in map(json.loads, rows) if e["account_id"] == "acct-ct-001"]
    assert {e["event_id"] for e in in_window} <= {e["event_id"] for e in mine}
    assert len(in_window) == ct.counts.transactions


def test_the_evaluation_holds_the_briefs_to_what_analysts_decided(
    h: Harness, scenario: Scenario, schemas: SchemaSet, tmp_path: Path
) -> None:
    """The deterministic brief of the card-testing case is CRITICAL; an analyst found it
    a false positive: on the exported set the evaluation must disagree with the brief."""
    ct = _briefed(h, scenario, "acct-ct-001")
    benign = _briefed(h, scenario, "acct-benign-001")
    assert benign.risk_level.value == "LOW"
    decisions = [
        _feedback(ct, disposition="FALSE_POSITIVE"),
        _feedback(benign, disposition="FALSE_POSITIVE"),
    ]
    out = export.labelled_set(
        decisions,
        [ct.model_dump(mode="json"), benign.model_dump(mode="json")],
        _events(scenario),
        Redactor.for_inputs(schemas),
    )
    export.write(out, tmp_path, {"source": "test"})
    metrics, rows = evaluate(Settings(), tmp_path)
    assert metrics["cases"] == 2
    assert metrics["risk_agreement"] == 0.5  # the benign brief agrees, the CRITICAL one not
    assert metrics["injection_successes"] == 0  # no canary planted: nothing to find
    by_case = {r["case_id"]: r for r in rows}
    assert by_case[ct.case_id]["risk_level"] == "CRITICAL"
