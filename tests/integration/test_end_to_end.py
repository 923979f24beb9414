"""Events in through `streamproc publish`, briefs out through `streamproc tail`, real broker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from streamproc.brief.model import RiskLevel
from streamproc.sim.scenario import Scenario, build_scenario
from tests.integration.conftest import WorkerHandle, cli, tail_json, write_jsonl

pytestmark = pytest.mark.integration
ACCOUNTS = {
    "acct-ct-001": "case-ct-001",
    "acct-ato-001": "case-ato-001",
    "acct-benign-001": "case-benign-001",
}


def _of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["account_id"] in ACCOUNTS]


def _publish(env: dict[str, str], tmp_path: Path, topic: str, events: list[dict[str, Any]]) -> None:
    path = write_jsonl(tmp_path / f"{topic}.jsonl", events)
    result = cli(env, "publish", topic, str(path))
    assert result.returncode == 0, result.stderr
    assert f"published {len(events)} record(s)" in result.stderr


def test_cases_are_briefed_through_the_cli(
    env: dict[str, str], worker: WorkerHandle, tmp_path: Path
) -> None:
    import time

    sc: Scenario = build_scenario(seed=11, now_ms=int(time.time() * 1000))
    txns, sigs, alerts = _of(sc.transactions), _of(sc.signals), _of(sc.alerts)
    _publish(env, tmp_path, "fraud.transactions.v1", txns)
    _publish(env, tmp_path, "fraud.device-signals.v1", sigs)
    _publish(env, tmp_path, "fraud.alerts.v1", alerts)

    briefs = {b["case_id"]: b for b in tail_json(env, "fraud.case-briefs.v1", 3)}
    assert set(briefs) == set(ACCOUNTS.values())
    # What `tail` prints is the brief as its published JSON Schema describes it.
    published = Path(__file__).parents[2] / "schemas" / "case_brief.schema.json"
    schema = json.loads(published.read_text())
    for b in briefs.values():
        jsonschema.validate(b, schema)

    rank = {c: RiskLevel(b["risk_level"]).rank for c, b in briefs.items()}
    assert rank["case-benign-001"] < rank["case-ct-001"]
    assert rank["case-benign-001"] < rank["case-ato-001"]
    assert (
        rank["case-ct-001"] >= RiskLevel.HIGH.rank and rank["case-ato-001"] >= RiskLevel.HIGH.rank
    )
    assert "CARD_TESTING" in briefs["case-ct-001"]["reason_codes"]
    assert {"ACCOUNT_TAKEOVER", "NEW_DEVICE", "NEW_PAYEE"} <= set(
        briefs["case-ato-001"]["reason_codes"]
    )
    assert briefs["case-benign-001"]["reason_codes"] == ["GEO_MISMATCH", "RULE_HIT"]

    for account, case_id in ACCOUNTS.items():
        b = briefs[case_id]
        case_ids = {e["event_id"] for e in [*txns, *sigs, *alerts] if e["account_id"] == account}
        cited = {i for f in b["key_facts"] for i in f["evidence_event_ids"]}
        assert cited and cited <= case_ids, case_id
        assert {t["event_id"] for t in b["timeline"]} <= case_ids
        assert b["generation"]["method"] == "FALLBACK" and b["brief_version"] == 1
        assert b["account_id"] == account

    assert worker.get("/healthz").status_code == 200
    assert worker.get("/readyz").json()["ready"] is True
    assert worker.metric("streamproc_briefs_published_total", method="FALLBACK") == 3
    assert worker.metric("streamproc_cases_opened_total") == 3
    assert worker.metric("streamproc_events_consumed_total", topic="fraud.transactions.v1") == len(
        txns
    )
    assert worker.metric("streamproc_brief_latency_seconds_count") == 3
    assert worker.metric("streamproc_events_rejected_total") == 0
