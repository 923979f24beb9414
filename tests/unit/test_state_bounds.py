"""No state value outgrows the changelog record it is written as: an account flooded
with contract-valid records at the size limits, and a case with hundreds of large
alerts, are trimmed deterministically, say so, and fit the limit topics.yaml declares."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import yaml

from streamproc.contracts.records import from_json
from streamproc.contracts.schemas import SchemaSet
from streamproc.domain import bounds
from streamproc.domain.case import assemble_case
from streamproc.domain.window import TXN, add_event, empty_window
from streamproc.engine.state import WriteBackTable
from tests.conftest import NOW_MS
from tests.flood import max_alert, max_transfer
from tests.unit.test_state import FakeTable, Sink

TOPICS = Path(__file__).resolve().parents[2] / "topics" / "topics.yaml"


def declared_limit(table: str) -> int:
    """Read from the topic declarations by hand: the oracle does not use the worker's."""
    doc = yaml.safe_load(TOPICS.read_text())
    [spec] = [t for t in doc["topics"] if t["name"] == f"streamproc-{table}-changelog"]
    return int(spec["config"]["max.message.bytes"])


def flooded_window(n: int = 90) -> dict[str, Any]:
    schema = SchemaSet().for_topic("fraud.transactions.v1")
    window = empty_window()
    for i in range(n):
        record = from_json(schema, max_transfer("acct-flood", i, NOW_MS + i * 1000), now_ms=NOW_MS)
        add_event(window, TXN, record, lookback_ms=72 * 3600_000, max_events=500)
    return window


def test_a_flooded_window_is_trimmed_to_the_declared_limit_and_says_so() -> None:
    limit = declared_limit("windows")
    window = flooded_window()
    assert len(orjson.dumps(window)) > limit  # the defect: 90 of them pass 1 MB
    table, sink = FakeTable({}), Sink()
    wb = WriteBackTable(table, sink, max_bytes=limit, shrink=bounds.shrink_window)
    wb.partition = 3
    wb["acct-flood"] = window
    wb.flush()
    [(_, partition, key, value)] = sink.records
    assert value is not None and len(key) + len(value) <= limit and partition == 3
    kept = orjson.loads(value)
    assert kept["cut_size"] > 0 and len(kept[TXN]) + kept["cut_size"] == 90
    newest = sorted(r["occurred_at"] for r in window[TXN].values())
    assert min(r["occurred_at"] for r in kept[TXN].values()) == newest[0]  # oldest went
    alert = {"event_id": "a1", "alert_id": "al1", "occurred_at": NOW_MS + 100_000,
             "transaction_ids": []}  # fmt: skip
    case = assemble_case("c", "acct-flood", [alert], kept, lookback_ms=10**9, after_ms=10**6)
    [gap] = [g for g in case.data_gaps if g.startswith("history cut")]
    assert f"{kept['cut_size']} of them to keep the account's state within" in gap


def test_a_case_with_hundreds_of_large_alerts_keeps_every_recent_alert_and_fits() -> None:
    limit = declared_limit("cases")
    schema = SchemaSet().for_topic("fraud.alerts.v1")
    alerts = {}
    for i in range(300):
        a = from_json(schema, max_alert("acct-flood", "case-f", i, NOW_MS + i), now_ms=NOW_MS)
        alerts[a["event_id"]] = a
    case = {"account_id": "acct-flood", "partition": 1, "alerts": alerts, "version": 0}
    assert len(orjson.dumps(case)) > limit
    table, sink = FakeTable({}), Sink()
    wb = WriteBackTable(table, sink, max_bytes=limit, shrink=bounds.shrink_case)
    wb["case-f"] = case
    wb.flush()
    [(_, _, key, value)] = sink.records
    assert value is not None and len(key) + len(value) <= limit
    kept = orjson.loads(value)
    newest = sorted(alerts, key=lambda e: alerts[e]["occurred_at"])[-bounds.ALERTS_KEPT_WHOLE :]
    for event_id in newest:  # the newest alerts keep everything
        assert kept["alerts"][event_id] == alerts[event_id]
    assert kept["alerts_trimmed"] > 0


def test_a_value_that_cannot_be_trimmed_is_not_written_and_is_counted() -> None:
    outcomes: list[str] = []
    table, sink = FakeTable({"k": {"old": 1}}), Sink()
    wb = WriteBackTable(table, sink, max_bytes=2000, on_trim=outcomes.append)
    wb["k"] = {"draft": "x" * 5000}
    wb.flush()
    assert sink.records == [("app-windows-changelog", 0, b'"k"', None)]  # a tombstone
    assert "k" not in table.data and outcomes == ["dropped"]
