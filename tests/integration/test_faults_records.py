"""Fault suite, records: poison records of every kind, and an upstream schema change.

The worker runs with a schema registry (the loopback stand-in of tests/unit/test_registry),
so Confluent-framed records resolve their writer schema by id; single-object records are
read too. Every poison record must land in the DLQ exactly once, with its original key,
value and headers and Kafka Connect style context headers that quote no field value;
the good case published after them is briefed as usual.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import struct
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastavro import parse_schema, schemaless_writer

from streamproc.cli.kafkaio import produce_raw, publish_events
from streamproc.config import Settings
from streamproc.contracts.codec import AvroCodec
from streamproc.contracts.records import from_json
from streamproc.contracts.schemas import SchemaSet
from streamproc.kafka.broker import stop_child
from streamproc.sim.scenario import build_scenario
from tests.integration.conftest import start_worker, tail_json
from tests.unit.test_registry import registry_url  # noqa: F401  (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.faults]
TXN = "fraud.transactions.v1"
KEY = b"acct-poison-001"
MEMO = "Memo text that must never appear in an error header"


def _txn(now_ms: int, **over: Any) -> dict[str, Any]:
    base = {
        "event_id": f"evt-{over.pop('n', 1)}",
        "transaction_id": "txn-poison",
        "account_id": KEY.decode(),
        "occurred_at": now_ms - 60_000,
        "amount_minor": 1234,
        "currency": "EUR",
        "direction": "DEBIT",
        "channel": "CARD_PRESENT",
        "status": "APPROVED",
        "memo": MEMO,
        "card_pan": "4111111111111111",
    }
    return from_json(SchemaSet().for_topic(TXN), {**base, **over}, now_ms=now_ms)


def _register(url: str, subject: str, schema: dict[str, Any]) -> int:
    r = httpx.post(f"{url}/subjects/{subject}/versions", json={"schema": json.dumps(schema)})
    return int(r.json()["id"])


def _framed(schema_id: int, schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    out.write(struct.pack(">bI", 0, schema_id))
    schemaless_writer(out, parse_schema(schema), record)
    return out.getvalue()


def poison_records(url: str, now_ms: int) -> dict[str, bytes]:
    schemas = SchemaSet()
    txn_schema = schemas.for_topic(TXN)
    single = AvroCodec(schemas)
    good = single.encode(TXN, _txn(now_ms))
    body = good[10:]  # after the single-object header

    bogus_enum = copy.deepcopy(txn_schema.raw)
    bogus_enum["name"] = "TransactionBogus"
    for f in bogus_enum["fields"]:
        if f["name"] == "direction":
            f["type"]["symbols"] = [*f["type"]["symbols"], "SIDEWAYS"]
    enum_bytes = io.BytesIO()
    enum_bytes.write(good[:10])  # the real fingerprint, a symbol the reader does not have
    schemaless_writer(
        enum_bytes, parse_schema(bogus_enum), {**_txn(now_ms), "direction": "SIDEWAYS"}
    )

    no_currency = copy.deepcopy(txn_schema.raw)
    no_currency["fields"] = [f for f in no_currency["fields"] if f["name"] != "currency"]
    missing_id = _register(url, f"{TXN}-value", no_currency)
    missing = {k: v for k, v in _txn(now_ms).items() if k != "currency"}

    utf8 = single.encode(TXN, _txn(now_ms, memo="ZZZZZZZZ"))
    huge = single.encode(TXN, {**_txn(now_ms), "memo": "x" * 1_200_000})  # no checks on write
    return {
        "truncated_avro": good[: len(good) // 2],
        "wrong_schema_id": struct.pack(">bI", 0, 424242) + body,
        "unknown_fingerprint": b"\xc3\x01" + b"\x13" * 8 + body,
        "huge_record": huge,
        "invalid_utf8": utf8.replace(b"ZZZZZZZZ", b"\xff\xfeZZZZZZ"),
        "invalid_enum": enum_bytes.getvalue(),
        "missing_required_field": _framed(missing_id, no_currency, missing),
        "timestamp_far_future": single.encode(
            TXN, {**_txn(now_ms), "occurred_at": now_ms + 40 * 86_400_000}
        ),
        "timestamp_far_past": single.encode(TXN, {**_txn(now_ms), "occurred_at": 631_152_000_000}),
        "key_not_account": good,  # keyed by another account: would join the wrong state
    }


def test_poison_records_each_dead_lettered_once_and_nothing_else_affected(
    env: dict[str, str],
    topics: None,
    tmp_path: Path,
    registry_url: str,  # noqa: F811
) -> None:
    env = {**env, "STREAMPROC_SCHEMA_REGISTRY_URL": registry_url}
    settings = Settings(
        kafka_bootstrap=env["STREAMPROC_KAFKA_BOOTSTRAP"], schema_registry_url=registry_url
    )
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        now = int(time.time() * 1000)
        records = poison_records(registry_url, now)
        for kind, value in records.items():
            key = b"acct-someone-else" if kind == "key_not_account" else KEY
            produce_raw(
                settings,
                TXN,
                key,
                value,
                headers=[("origin", b"poison-test"), ("kind", kind.encode())],
            )
        sc = build_scenario(seed=3, now_ms=now)
        pick = lambda evs: [e for e in evs if e["account_id"] == "acct-benign-001"]  # noqa: E731
        publish_events(settings, "fraud.transactions.v1", pick(sc.transactions))
        publish_events(settings, "fraud.device-signals.v1", pick(sc.signals))
        publish_events(settings, "fraud.alerts.v1", pick(sc.alerts))

        [brief] = tail_json(env, "fraud.case-briefs.v1", 1)
        assert brief["case_id"] == "case-benign-001"
        dead = tail_json(env, "fraud.dlq.v1", len(records))
        time.sleep(2.0)
        assert worker.metric("streamproc_dlq_published_total") == len(records)  # not one more
        by_kind: dict[str, list[dict[str, Any]]] = {}
        for d in dead:
            by_kind.setdefault(d["headers"]["kind"], []).append(d)
        assert sorted(by_kind) == sorted(records)
        offsets = set()
        for kind, [d] in by_kind.items():  # exactly once each
            h = d["headers"]
            assert base64.b64decode(d["value_b64"]) == records[kind], kind
            assert d["key"] == ("acct-someone-else" if kind == "key_not_account" else KEY.decode())
            assert h["origin"] == "poison-test"
            assert h["__connect.errors.topic"] == TXN
            assert h["__connect.errors.partition"].isdigit()
            offsets.add((h["__connect.errors.partition"], h["__connect.errors.offset"]))
            assert h["__connect.errors.exception.class.name"].endswith("Error")
            message = h["__connect.errors.exception.message"]
            for value in (MEMO, "4111111111111111", "ZZZZ", "xxxxxxxx", "SIDEWAYS"):
                assert value not in message, (kind, message)
        assert len(offsets) == len(records)
        reasons = {k: by_kind[k][0]["headers"]["streamproc.errors.reason"] for k in by_kind}
        assert (
            reasons["unknown_fingerprint"]
            == reasons["wrong_schema_id"]
            != reasons["truncated_avro"]
        )
        assert worker.proc.poll() is None
    finally:
        assert stop_child(worker.proc, 30.0) == 0


def test_an_added_optional_field_is_read_in_old_and_new_records(
    env: dict[str, str],
    topics: None,
    tmp_path: Path,
    registry_url: str,  # noqa: F811
) -> None:
    """Upstream adds `loyalty_tier` (optional, default null): a backward-compatible change.
    Records of both versions, interleaved, are decoded and joined into one case."""
    env = {**env, "STREAMPROC_SCHEMA_REGISTRY_URL": registry_url}
    settings = Settings(
        kafka_bootstrap=env["STREAMPROC_KAFKA_BOOTSTRAP"], schema_registry_url=registry_url
    )
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        now = int(time.time() * 1000)
        old = [_json_txn(now, i) for i in range(3)]
        publish_events(settings, TXN, old)  # registers and writes version 1
        v2 = copy.deepcopy(SchemaSet().for_topic(TXN).raw)
        v2["fields"].append({"name": "loyalty_tier", "type": ["null", "string"], "default": None})
        v2_id = _register(registry_url, f"{TXN}-value", v2)
        assert v2_id != 1
        new_records = [
            {**_txn(now, n=10 + i, transaction_id=f"txn-new-{i}"), "loyalty_tier": "gold"}
            for i in range(2)
        ]
        for rec in new_records:
            produce_raw(settings, TXN, KEY, _framed(v2_id, v2, rec))
        publish_events(settings, TXN, [_json_txn(now, 5)])  # and version 1 again
        alert = {
            "event_id": "evt-alert-evo",
            "alert_id": "alr-evo",
            "case_id": "case-evo-001",
            "account_id": KEY.decode(),
            "occurred_at": now,
            "rule_id": "R-EVO",
            "rule_name": "schema evolution",
            "severity": "MEDIUM",
            "transaction_ids": ["txn-new-0", "txn-old-0"],
        }
        publish_events(settings, "fraud.alerts.v1", [alert])
        [brief] = tail_json(env, "fraud.case-briefs.v1", 1)
        assert brief["counts"]["transactions"] == 6
        # both named transactions were found (the only gap: no device signals were sent)
        assert brief["data_gaps"] == ["no device signals in the case window"]
        assert worker.metric("streamproc_dlq_published_total") == 0
    finally:
        assert stop_child(worker.proc, 30.0) == 0


def _json_txn(now_ms: int, i: int) -> dict[str, Any]:
    return {
        "event_id": f"evt-old-{i}",
        "transaction_id": f"txn-old-{i}",
        "account_id": KEY.decode(),
        "occurred_at": now_ms - (10 - i) * 60_000,
        "amount_minor": 1000 + i,
        "currency": "EUR",
        "direction": "DEBIT",
        "channel": "CARD_PRESENT",
        "status": "APPROVED",
    }
