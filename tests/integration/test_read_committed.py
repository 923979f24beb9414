"""Inputs are read committed: the records of an upstream transaction that is still open
are not briefed, and the case does not wait for them (the inputs gate takes the last
stable offset, not the high watermark, as the end of what it can read).

Aborted transactions cannot be shown here: the embedded broker sends no aborted-
transaction index, so a read-committed consumer reads aborted records as committed
(Apache Kafka filters them). The consumer's isolation level is held in a unit test."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Producer

from streamproc.cli.kafkaio import publish_events
from streamproc.config import Settings
from streamproc.contracts.codec import AvroCodec
from streamproc.contracts.records import from_json
from streamproc.contracts.schemas import SchemaSet
from tests.integration.conftest import WorkerHandle, published_briefs

pytestmark = pytest.mark.integration
ACCOUNT = "acct-txn-0001"


def _txn(i: int, at_ms: int) -> dict[str, object]:
    return {
        "event_id": f"evt-txn-{i}", "transaction_id": f"txn-{i}", "account_id": ACCOUNT,
        "occurred_at": at_ms, "amount_minor": 1000 * (i + 1), "currency": "GBP",
        "direction": "DEBIT", "channel": "TRANSFER", "status": "APPROVED",
    }  # fmt: skip


def test_an_open_upstream_transaction_is_neither_briefed_nor_waited_for(
    settings: Settings, env: dict[str, str], worker: WorkerHandle
) -> None:
    now = int(time.time() * 1000)
    publish_events(settings, "fraud.transactions.v1", [_txn(0, now - 60_000)])  # committed
    codec, schema = AvroCodec(SchemaSet()), SchemaSet().for_topic("fraud.transactions.v1")
    upstream = Producer({"bootstrap.servers": env["STREAMPROC_KAFKA_BOOTSTRAP"],
                         "transactional.id": "upstream-core-banking",
                         "partitioner": "murmur2_random"})  # fmt: skip
    upstream.init_transactions(10)
    upstream.begin_transaction()
    for i in range(1, 4):  # still open when the alert comes, and for the rest of the test
        record = from_json(schema, _txn(i, now - 30_000 + i))
        value = codec.encode("fraud.transactions.v1", record)
        upstream.produce("fraud.transactions.v1", key=ACCOUNT.encode(), value=value)
    assert upstream.flush(10) == 0
    alert = {
        "event_id": "evt-alert-1", "alert_id": "alr-1", "case_id": "case-txn-1",
        "account_id": ACCOUNT, "occurred_at": now, "rule_id": "R-1", "rule_name": "rule",
        "severity": "HIGH", "transaction_ids": ["txn-0"],
    }  # fmt: skip
    publish_events(settings, "fraud.alerts.v1", [alert])
    deadline, briefs = time.monotonic() + 45, []
    while time.monotonic() < deadline and not briefs:
        briefs = published_briefs(settings)
        time.sleep(0.5)
    assert len(briefs) == 1, worker.log.read_text()[-3000:]
    [brief] = briefs
    ids = {str(t["event_id"]) for t in brief["timeline"]}  # type: ignore[union-attr]
    assert "evt-txn-0" in ids and not ids & {"evt-txn-1", "evt-txn-2", "evt-txn-3"}, ids
    assert brief["counts"]["transactions"] == 1  # type: ignore[index]
    assert "still behind" not in worker.log.read_text()  # not held for CASE_MAX_WAIT_S
    upstream.abort_transaction(10)
