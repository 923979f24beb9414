"""Case semantics on the broker: duplicates, out-of-order and late events, second alert."""

from __future__ import annotations

import time

import pytest

from streamproc.cli.kafkaio import publish_events
from streamproc.config import Settings
from streamproc.sim.scenario import build_scenario
from tests.integration.conftest import WorkerHandle, tail_json

pytestmark = pytest.mark.integration
ACCOUNT = "acct-ct-001"


def test_duplicates_disorder_late_transaction_and_second_alert(
    env: dict[str, str], settings: Settings, worker: WorkerHandle
) -> None:
    sc = build_scenario(seed=21, now_ms=int(time.time() * 1000))
    txns = [e for e in sc.transactions if e["account_id"] == ACCOUNT]
    [alert] = [a for a in sc.alerts if a["account_id"] == ACCOUNT]
    late = next(t for t in txns if t["transaction_id"] == alert["transaction_ids"][0])
    early = [t for t in txns if t is not late]

    # Reverse event-time order, every event twice (at-least-once upstream).
    publish_events(settings, "fraud.transactions.v1", early[::-1] + early)
    publish_events(settings, "fraud.alerts.v1", [alert])
    time.sleep(2.5)  # past the 1 s settle delay: the case must wait for `late`
    assert worker.metric("streamproc_briefs_published_total") == 0
    publish_events(settings, "fraud.transactions.v1", [late])

    [v1] = tail_json(env, "fraud.case-briefs.v1", 1)
    assert v1["brief_version"] == 1
    assert v1["counts"]["transactions"] == len(txns)
    assert not any("not received" in g for g in v1["data_gaps"])
    assert "CARD_TESTING" in v1["reason_codes"]
    times = [t["occurred_at"] for t in v1["timeline"]]
    assert times == sorted(times)
    assert worker.metric("streamproc_events_duplicate_total", topic="fraud.transactions.v1") == len(
        early
    )

    second = {**alert, "event_id": "evt-second", "alert_id": "alr-second", "transaction_ids": []}
    publish_events(settings, "fraud.alerts.v1", [alert, second])  # the first is a replay
    briefs = tail_json(env, "fraud.case-briefs.v1", 2)
    v2 = briefs[-1]
    assert v2["brief_version"] == 2 and v2["case_id"] == v1["case_id"]
    assert sorted(v2["alert_ids"]) == sorted([alert["alert_id"], "alr-second"])
    assert v2["brief_id"] != v1["brief_id"]
    assert worker.metric("streamproc_cases_opened_total") == 1
