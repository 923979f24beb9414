"""An account flooded with contract-valid records at the size limits, on the embedded
broker. The broker does not enforce `max.message.bytes` (Apache Kafka does, and refuses
records over about 1 MB): so the test reads back every changelog record as written and
holds it to the limit topics.yaml declares for its topic, read here by hand."""

from __future__ import annotations

import time
from pathlib import Path

import yaml
from aiokafka.partitioner import murmur2  # the Java client's partitioner: an oracle
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from streamproc.cli.kafkaio import publish_events
from streamproc.config import Settings
from streamproc.kafka.broker import stop_child
from tests.flood import max_transfer
from tests.integration.conftest import WorkerHandle, published_briefs

TOPICS = Path(__file__).resolve().parents[2] / "topics" / "topics.yaml"
PARTITIONS = 6
FLOOD = "acct-flood-0001"
FLOOD_RECORDS = 150  # 150 x 12 KB: ~1.8 MB as one window, refused by Kafka before


def partition_of(account: str) -> int:
    return (murmur2(account.encode()) & 0x7FFFFFFF) % PARTITIONS


def neighbours(n: int) -> list[str]:
    """Accounts on the flooded account's partition."""
    found, i = [], 0
    while len(found) < n:
        account = f"acct-near-{i:04d}"
        if partition_of(account) == partition_of(FLOOD):
            found.append(account)
        i += 1
    return found


KAFKA_DEFAULT = 1_048_588  # Apache Kafka's broker-wide message.max.bytes


def declared_limits() -> dict[str, int]:
    """Each changelog's max.message.bytes, or the broker default a topic gets without."""
    doc = yaml.safe_load(TOPICS.read_text())
    return {
        t["name"]: int((t.get("config") or {}).get("max.message.bytes", KAFKA_DEFAULT))
        for t in doc["topics"]
        if t["role"] == "changelog"
    }


def raw_records(bootstrap: str, topic: str) -> list[tuple[int, int]]:
    """(key bytes, value bytes) of every record on `topic`, as the broker holds them."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"sizes-{time.time()}",
         "enable.partition.eof": True, "enable.auto.commit": False}
    )  # fmt: skip
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        open_parts, out = set(parts), []
        deadline = time.monotonic() + 60
        while open_parts and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    open_parts.discard(msg.partition())
                continue
            out.append((len(msg.key() or b""), len(msg.value() or b"")))
        assert not open_parts, f"{topic}: not read to its end"
        return out
    finally:
        consumer.close()


def test_a_flooded_account_never_writes_a_state_record_over_its_topics_limit(
    settings: Settings, env: dict[str, str], worker: WorkerHandle
) -> None:
    now = int(time.time() * 1000)
    start = now - 3600_000
    flood = [max_transfer(FLOOD, i, start + i * 1000) for i in range(FLOOD_RECORDS)]
    near = neighbours(3)
    small = [
        {"event_id": f"evt-{a}", "transaction_id": f"txn-{a}", "account_id": a,
         "occurred_at": now - 60_000, "amount_minor": 5000, "currency": "GBP",
         "direction": "DEBIT", "channel": "CARD_NOT_PRESENT", "status": "APPROVED",
         "merchant_name": "Shop"}
        for a in near
    ]  # fmt: skip
    publish_events(settings, "fraud.transactions.v1", flood + small)
    alerts = [
        {"event_id": f"evt-alert-{a}", "alert_id": f"alr-{a}", "case_id": f"case-{a}",
         "account_id": a, "occurred_at": now, "rule_id": "R-1", "rule_name": "rule",
         "severity": "HIGH", "transaction_ids": [t]}
        for a, t in [(FLOOD, flood[-1]["transaction_id"])] + [(a, f"txn-{a}") for a in near]
    ]  # fmt: skip
    publish_events(settings, "fraud.alerts.v1", alerts)
    deadline = time.monotonic() + 120
    briefs: dict[str, dict[str, object]] = {}
    while time.monotonic() < deadline and len(briefs) < len(alerts):
        briefs = {str(b["case_id"]): b for b in published_briefs(settings)}
        time.sleep(1)
    assert sorted(briefs) == sorted(a["case_id"] for a in alerts), worker.log.read_text()[-3000:]
    flooded = briefs[f"case-{FLOOD}"]
    gaps = [str(g) for g in flooded["data_gaps"]]  # type: ignore[attr-defined]
    assert any("to keep the account's state within its record size limit" in g for g in gaps)
    assert worker.metric("streamproc_state_trimmed_total", table="windows", outcome="trimmed")
    for topic, limit in declared_limits().items():
        sizes = raw_records(env["STREAMPROC_KAFKA_BOOTSTRAP"], topic)
        over = [k + v for k, v in sizes if k + v > limit]
        assert not over, f"{topic}: {len(over)} record(s) over {limit} bytes: {max(over)}"
    stop_child(worker.proc, 20)
    assert worker.proc.returncode == 0
