"""A schema registry that hangs while the worker runs: the event loop is never blocked
(/healthz answers), /readyz turns red and back, records that need a schema id the
registry does not give go to the DLQ saying so, and everything else is briefed."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest

from streamproc.cli.kafkaio import produce_raw, publish_events, read_records
from streamproc.config import Settings
from streamproc.contracts.codec import AvroCodec
from streamproc.contracts.records import from_json
from streamproc.contracts.schemas import SchemaSet
from streamproc.kafka.broker import stop_child
from tests.integration.conftest import published_briefs, start_worker
from tests.registry_stub import registry

pytestmark = pytest.mark.integration
TXN = "fraud.transactions.v1"


def _txn(i: int, account: str, at: int) -> dict[str, object]:
    return {
        "event_id": f"evt-r-{i}", "transaction_id": f"txn-r-{i}", "account_id": account,
        "occurred_at": at, "amount_minor": 1234, "currency": "GBP", "direction": "DEBIT",
        "channel": "TRANSFER", "status": "APPROVED",
    }  # fmt: skip


def _wait(check: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def test_a_hung_registry_blocks_nothing_and_says_so(
    env: dict[str, str], settings: Settings, topics: None, tmp_path: Path
) -> None:
    with registry() as reg:
        worker = start_worker({**env, "STREAMPROC_SCHEMA_REGISTRY_URL": reg.url},
                              tmp_path / "worker.log")  # fmt: skip
        try:
            # A schema id the worker has never seen: the transaction schema as id 99.
            reg.schemas[99] = SchemaSet().for_topic(TXN).canonical_json
            reg.hang.set()
            now = int(time.time() * 1000)
            record = from_json(SchemaSet().for_topic(TXN), _txn(1, "acct-reg-1", now))
            body = AvroCodec(SchemaSet()).encode(TXN, record)[10:]  # the bare Avro body
            produce_raw(settings, TXN, b"acct-reg-1", b"\0" + struct.pack(">I", 99) + body)
            started = time.monotonic()
            slowest = 0.0
            while time.monotonic() - started < 12:
                t0 = time.monotonic()
                assert worker.get("/healthz").status_code == 200  # the loop is free
                slowest = max(slowest, time.monotonic() - t0)
                time.sleep(0.2)
            assert slowest < 2.0, f"/healthz took {slowest:.1f}s while the registry hung"
            assert _wait(lambda: worker.get("/readyz").status_code == 503, 15)
            assert "registry_reachable" in worker.get("/readyz").text
            dead = list(read_records(settings, "fraud.dlq.v1", timeout_s=20, to_end=True))
            reasons = [r["headers"].get("streamproc.errors.reason") for r in dead]
            assert reasons == ["registry_unavailable"], dead
            # Records in single-object encoding need no registry: still briefed.
            publish_events(settings, TXN, [_txn(2, "acct-reg-2", now)])
            alert = {
                "event_id": "evt-r-a",
                "alert_id": "alr-r",
                "case_id": "case-r",
                "account_id": "acct-reg-2",
                "occurred_at": now,
                "rule_id": "R",
                "rule_name": "rule",
                "severity": "HIGH",
                "transaction_ids": ["txn-r-2"],
            }
            publish_events(settings, "fraud.alerts.v1", [alert])  # fmt: skip
            reg.hang.clear()  # the briefs' schema may need registering: the registry is back
            assert _wait(lambda: worker.get("/readyz").status_code == 200, 20)
            framed = settings.model_copy(update={"schema_registry_url": reg.url})
            assert _wait(lambda: any(b.get("case_id") == "case-r"
                                     for b in published_briefs(framed)), 30)  # fmt: skip
        finally:
            reg.hang.clear()
            stop_child(worker.proc, 20)
        assert worker.proc.returncode == 0
