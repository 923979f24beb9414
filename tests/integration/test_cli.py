"""The CLI against a real broker: topics apply, publish with bad lines, tail, worker refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from streamproc.cli.kafkaio import produce_raw, read_records
from streamproc.config import Settings
from streamproc.errors import BrokerError
from tests.integration.conftest import cli, tail_json

pytestmark = pytest.mark.integration

GOOD = {
    "event_id": "e1",
    "transaction_id": "t1",
    "account_id": "a1",
    "occurred_at": "2026-09-21T10:00:00Z",
    "amount_minor": 100,
    "currency": "EUR",
    "direction": "DEBIT",
    "channel": "ATM",
    "status": "APPROVED",
}


def test_topics_apply_is_idempotent(env: dict[str, str]) -> None:
    first = cli(env, "topics", "apply")
    assert first.returncode == 0, first.stderr
    assert "created  fraud.transactions.v1" in first.stdout
    second = cli(env, "topics", "apply")
    assert second.returncode == 0, second.stderr
    assert "created" not in second.stdout and "exists   fraud.case-briefs.v1" in second.stdout


def test_publish_reports_bad_lines_and_still_sends_good_ones(
    env: dict[str, str], topics: None, tmp_path: Path
) -> None:
    lines = [
        json.dumps(GOOD),
        "{not json",
        json.dumps({k: v for k, v in GOOD.items() if k != "currency"}),
        "",
        json.dumps({**GOOD, "event_id": "e3", "channel": "TELEPATHY"}),
        json.dumps({**GOOD, "event_id": "e2", "occurred_at": 1_789_984_800_000}),
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = cli(env, "publish", "fraud.transactions.v1", str(path))
    assert result.returncode == 1
    assert f"{path}:2: not valid JSON" in result.stderr
    assert f"{path}:3: missing required field currency" in result.stderr
    assert f"{path}:5: field channel must be one of" in result.stderr
    assert ":4:" not in result.stderr and ":1:" not in result.stderr
    assert "published 2 record(s) to fraud.transactions.v1; 3 bad line(s)" in result.stderr
    records = tail_json(env, "fraud.transactions.v1", 2, timeout=20)
    assert sorted(r["event_id"] for r in records) == ["e1", "e2"]
    # Both lines stated 2026-09-21T10:00:00Z, one as ISO-8601 and one in epoch ms.
    assert [r["occurred_at"] for r in records] == [1_789_984_800_000] * 2
    iso = cli(env, "tail", "fraud.transactions.v1", "--max", "2", "--timeout", "20", "--iso")
    assert iso.returncode == 0, iso.stderr
    printed = [json.loads(line)["occurred_at"] for line in iso.stdout.splitlines()]
    assert printed == ["2026-09-21T10:00:00.000Z"] * 2


def test_publish_to_a_topic_without_schema_or_missing_file(
    env: dict[str, str], topics: None, tmp_path: Path
) -> None:
    missing = cli(env, "publish", "fraud.transactions.v1", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    (tmp_path / "x.jsonl").write_text(json.dumps(GOOD) + "\n")
    noschema = cli(env, "publish", "fraud.dlq.v1", str(tmp_path / "x.jsonl"))
    assert noschema.returncode == 2 and "has no schema" in noschema.stderr


def test_tail_times_out_with_a_message(env: dict[str, str], topics: None) -> None:
    result = cli(env, "tail", "fraud.case-briefs.v1", "--max", "1", "--timeout", "2")
    assert result.returncode == 1 and "0 of 1 record(s)" in result.stderr


def test_reading_to_the_end_stops_at_what_the_topic_held(settings: Settings, topics: None) -> None:
    topic = "fraud.dlq.v1"  # no Avro schema: records come back as written
    keys = [f"k{i}" for i in range(7)]  # spread over some partitions, others left empty
    for key in keys:
        produce_raw(settings, topic, key.encode(), json.dumps({"n": key}).encode())
    got = list(read_records(settings, topic, timeout_s=60, to_end=True))
    assert sorted(r["value"]["n"] for r in got) == keys
    assert list(read_records(settings, "fraud.case-briefs.v1", timeout_s=60, to_end=True)) == []
    # Out of time before the end: an error, never a partial read passed off as the whole.
    with pytest.raises(BrokerError, match="not read to their end within 0s"):
        list(read_records(settings, topic, timeout_s=0, to_end=True))


def test_worker_refuses_inputs_that_are_not_copartitioned(env: dict[str, str]) -> None:
    admin = AdminClient({"bootstrap.servers": env["STREAMPROC_KAFKA_BOOTSTRAP"]})
    new = [
        NewTopic("fraud.transactions.v1", 6, 1),
        NewTopic("fraud.device-signals.v1", 3, 1),
        NewTopic("fraud.alerts.v1", 6, 1),
        NewTopic("fraud.brief-feedback.v1", 6, 1),
    ]
    for fut in admin.create_topics(new).values():
        fut.result()
    result = cli(env, "worker", timeout=60)
    assert result.returncode == 2
    assert "not co-partitioned" in result.stderr
    assert "fraud.device-signals.v1=3" in result.stderr


def test_worker_refuses_missing_topics(env: dict[str, str]) -> None:
    result = cli(env, "worker", timeout=60)
    assert result.returncode == 2
    assert "streamproc topics apply" in result.stderr
