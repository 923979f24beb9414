"""An input record without a key, or on another partition than its key's, is
dead-lettered with the reason: a producer with another partitioner (librdkafka's CRC32
default, a round-robin one) would otherwise split an account between workers. The
expected partition is computed with aiokafka's pure-Python murmur2 (the Java client's),
an implementation the worker does not use."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import murmur2
from prometheus_client import CollectorRegistry

from streamproc.config import Settings
from streamproc.contracts.codec import AvroCodec
from streamproc.engine.dlq import InMessage
from streamproc.engine.processor import CaseProcessor
from streamproc.ops.metrics import Metrics
from tests.conftest import TXN_TOPIC
from tests.unit.test_processor import _avro_ready

PARTITIONS = 6


def java_partition(key: bytes) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % PARTITIONS


@pytest.fixture()
def processor(codec: AvroCodec) -> CaseProcessor:
    tables: dict[str, dict[str, object]] = {"w": {}, "c": {}, "p": {}}
    return CaseProcessor(
        Settings(), codec, Metrics(CollectorRegistry()), tables["w"], tables["c"], tables["p"],
        partitions=PARTITIONS,
    )  # fmt: skip


def _record(codec: AvroCodec, account: str) -> bytes:
    event = {
        "event_id": "evt-1", "transaction_id": "txn-1", "account_id": account,
        "occurred_at": "2026-11-30T10:00:00Z", "amount_minor": 100, "currency": "GBP",
        "direction": "DEBIT", "channel": "TRANSFER", "status": "APPROVED",
    }  # fmt: skip
    return codec.encode(TXN_TOPIC, _avro_ready(codec, TXN_TOPIC, event))


def test_a_record_on_its_keys_partition_is_taken(
    processor: CaseProcessor, codec: AvroCodec
) -> None:
    for i in range(50):
        account = f"acct-{i:03d}"
        at = java_partition(account.encode())
        msg = InMessage(TXN_TOPIC, at, i, account.encode(), _record(codec, account))
        assert processor.on_input(msg) is None, account
    assert len(processor.windows) == 50


def test_a_record_on_another_partition_is_dead_lettered(
    processor: CaseProcessor, codec: AvroCodec
) -> None:
    account = "acct-007"
    elsewhere = (java_partition(account.encode()) + 1) % PARTITIONS
    dlq = processor.on_input(InMessage(TXN_TOPIC, elsewhere, 9, account.encode(),
                                       _record(codec, account)))  # fmt: skip
    assert dlq is not None and dlq.topic == "fraud.dlq.v1"
    headers = dict(dlq.headers)
    assert headers["streamproc.errors.reason"] == b"wrong_partition"
    assert headers["__connect.errors.partition"] == str(elsewhere).encode()
    assert processor.windows == {}


def test_a_record_without_a_key_is_dead_lettered(
    processor: CaseProcessor, codec: AvroCodec
) -> None:
    dlq = processor.on_input(InMessage(TXN_TOPIC, 0, 1, None, _record(codec, "acct-1")))
    assert dlq is not None and dict(dlq.headers)["streamproc.errors.reason"] == b"missing_key"
    assert processor.windows == {}
