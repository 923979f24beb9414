"""Benchmark input: many accounts, transactions and device signals, Avro single-object encoded."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

from confluent_kafka import Producer

from streamproc.contracts.codec import AvroCodec
from streamproc.contracts.schemas import SchemaSet

TXN_TOPIC = "fraud.transactions.v1"
SIG_TOPIC = "fraud.device-signals.v1"
ALERT_TOPIC = "fraud.alerts.v1"


@dataclass(frozen=True)
class Encoded:
    topic: str
    key: bytes
    value: bytes


def events(n: int, accounts: int, seed: int = 1, start_ms: int | None = None) -> Iterator[Encoded]:
    """`n` events over `accounts` accounts: 3 transactions per device signal, event time rising."""
    codec = AvroCodec(SchemaSet())
    rng = random.Random(seed)
    t0 = start_ms or int(time.time() * 1000) - 3_600_000
    for i in range(n):
        acct = f"acct-{rng.randrange(accounts):07d}"
        at = t0 + i  # one event per millisecond of event time
        if i % 4 == 3:
            rec = {
                "event_id": f"s-{i}",
                "account_id": acct,
                "occurred_at": at,
                "device_id": f"dev-{acct}",
                "session_id": None,
                "signal_type": "LOGIN",
                "ip_address": None,
                "geo_country": "DE",
                "user_agent": None,
                "is_emulator": False,
                "is_vpn": False,
                "risk_score": 0.1,
            }
            yield Encoded(SIG_TOPIC, acct.encode(), codec.encode(SIG_TOPIC, rec))
        else:
            rec = {
                "event_id": f"t-{i}",
                "transaction_id": f"tx-{i}",
                "account_id": acct,
                "occurred_at": at,
                "amount_minor": rng.randint(100, 50_000),
                "currency": "EUR",
                "direction": "DEBIT",
                "channel": "CARD_PRESENT",
                "status": "APPROVED",
                "merchant_name": None,
                "merchant_category_code": "5411",
                "merchant_country": "DE",
                "card_pan": None,
                "counterparty_name": None,
                "counterparty_iban": None,
                "memo": None,
                "device_id": None,
                "ip_address": None,
            }
            yield Encoded(TXN_TOPIC, acct.encode(), codec.encode(TXN_TOPIC, rec))


def alert(i: int, account: str, txn_ids: list[str], at_ms: int) -> Encoded:
    codec = _codec()
    rec = {
        "event_id": f"a-{i}",
        "alert_id": f"alr-{i}",
        "case_id": f"case-{i}",
        "account_id": account,
        "occurred_at": at_ms,
        "rule_id": "R-BENCH",
        "rule_name": "bench",
        "severity": "HIGH",
        "score": 0.5,
        "transaction_ids": txn_ids,
        "customer_name": None,
        "customer_email": None,
        "customer_phone": None,
        "analyst_note": None,
    }
    return Encoded(ALERT_TOPIC, account.encode(), codec.encode(ALERT_TOPIC, rec))


_CODEC: list[AvroCodec] = []


def _codec() -> AvroCodec:
    if not _CODEC:
        _CODEC.append(AvroCodec(SchemaSet()))
    return _CODEC[0]


def producer(bootstrap: str) -> Producer:
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "partitioner": "murmur2_random",
            "linger.ms": 20,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 2_000_000,
            "acks": "all",
        }
    )


def produce_all(bootstrap: str, records: list[Encoded]) -> None:
    p = producer(bootstrap)
    for r in records:
        while True:
            try:
                p.produce(r.topic, key=r.key, value=r.value)
                break
            except BufferError:
                p.poll(0.05)
    if p.flush(120):
        raise RuntimeError("bench input not delivered")
