"""JSON form and contract checks: accepted forms, rejected ones, and messages without values."""

from __future__ import annotations

from typing import Any

import pytest

from streamproc.contracts.records import from_json, iso, parse_timestamp
from streamproc.contracts.schemas import SchemaSet
from streamproc.errors import EventValidationError
from tests.conftest import ALERT_TOPIC, NOW_MS, SIG_TOPIC, TXN_TOPIC

BASE: dict[str, Any] = {
    "event_id": "e1",
    "transaction_id": "t1",
    "account_id": "a1",
    "occurred_at": "2026-09-21T10:00:00+02:00",
    "amount_minor": 100,
    "currency": "EUR",
    "direction": "DEBIT",
    "channel": "ATM",
    "status": "APPROVED",
}


def test_timestamps_accept_offsets_z_and_epoch_ms() -> None:
    assert (
        parse_timestamp("2026-09-21T08:00:00Z", "f")
        == parse_timestamp("2026-09-21T10:00:00+02:00", "f")
        == parse_timestamp(1_789_977_600_000, "f")
    )
    assert iso(1_789_977_600_000) == "2026-09-21T08:00:00.000Z"


@pytest.mark.parametrize("value", ["2026-09-21T10:00:00", "yesterday", True, 1.5, None])
def test_timestamps_reject_naive_and_junk(value: Any) -> None:
    with pytest.raises(EventValidationError):
        parse_timestamp(value, "occurred_at")


def test_defaults_fill_optional_fields(schemas: SchemaSet) -> None:
    rec = from_json(schemas.for_topic(TXN_TOPIC), BASE, now_ms=NOW_MS)
    assert rec["merchant_name"] is None and rec["occurred_at"] == 1_789_977_600_000
    sig = from_json(
        schemas.for_topic(SIG_TOPIC),
        {
            "event_id": "s1",
            "account_id": "a1",
            "occurred_at": 1_789_977_600_000,
            "device_id": "d",
            "signal_type": "LOGIN",
        },
        now_ms=NOW_MS,
    )
    assert sig["is_vpn"] is False and sig["is_emulator"] is False


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"currency": "eur"}, "currency"),
        ({"direction": "SIDEWAYS"}, "direction"),
        ({"amount_minor": -5}, "amount_minor"),
        ({"amount_minor": "12"}, "amount_minor"),
        ({"merchant_country": "Germany"}, "merchant_country"),
        ({"merchant_category_code": "58"}, "merchant_category_code"),
        ({"occurred_at": "2099-01-01T00:00:00Z"}, "occurred_at"),
        ({"occurred_at": "1970-01-02T00:00:00Z"}, "occurred_at"),
        ({"account_id": "  "}, "account_id"),
        ({"memo": "x" * 5000}, "memo"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_contract_violations_name_the_field(
    schemas: SchemaSet, change: dict[str, Any], field: str
) -> None:
    with pytest.raises(EventValidationError) as info:
        from_json(schemas.for_topic(TXN_TOPIC), {**BASE, **change}, now_ms=NOW_MS)
    assert info.value.field == field
    assert field in str(info.value)


def test_missing_required_field(schemas: SchemaSet) -> None:
    event = {k: v for k, v in BASE.items() if k != "status"}
    with pytest.raises(EventValidationError, match="missing required field status"):
        from_json(schemas.for_topic(TXN_TOPIC), event, now_ms=NOW_MS)


def test_messages_never_quote_values(schemas: SchemaSet) -> None:
    secret = "anna.schmidt@example.com"
    alert = {
        "event_id": "e",
        "alert_id": "a",
        "case_id": "c",
        "account_id": "x",
        "occurred_at": 1_789_977_600_000,
        "rule_id": "r",
        "rule_name": "n",
        "severity": "HIGH",
        "transaction_ids": [],
        "customer_email": 42,
        "customer_name": secret,
    }
    with pytest.raises(EventValidationError) as info:
        from_json(schemas.for_topic(ALERT_TOPIC), alert, now_ms=NOW_MS)
    assert secret not in str(info.value) and "42" not in str(info.value)


def test_score_range(schemas: SchemaSet) -> None:
    sig = {
        "event_id": "s1",
        "account_id": "a1",
        "occurred_at": 1_789_977_600_000,
        "device_id": "d",
        "signal_type": "LOGIN",
        "risk_score": 1.5,
    }
    with pytest.raises(EventValidationError, match="risk_score"):
        from_json(schemas.for_topic(SIG_TOPIC), sig, now_ms=NOW_MS)


_TRICKY: list[Any] = [
    "", " ", "\t", "x", "x" * 128, "x" * 129, "x" * 4000, "x" * 4001, "EUR", "eur", "EU",
    "EURO", "DE", "de", "5411", "541", "54a1", "an.alyst:1", "Ana Lyst", "a@b.c", 0, -1,
    5, 10**13, 10**13 + 1, 0.0, 0.5, 1.0, 1.5, -0.1, True, False, [], ["a"], [""],
    ["x" * 129], list(range(3)), [1001], ["a"] * 1001,
]  # fmt: skip


@pytest.mark.parametrize("topic", [TXN_TOPIC, SIG_TOPIC, ALERT_TOPIC, "fraud.brief-feedback.v1"])
def test_the_checks_fast_path_agrees_with_the_rules_on_every_field(topic: str) -> None:
    """`check` passes common values without calling `_check_field` (and remembers
    values that matched a pattern): on every checked field of each input schema, a
    value is refused by `check` exactly when `_check_field` refuses it, the first time
    and once it was seen before."""
    from streamproc.contracts import records

    schema = SchemaSet().for_topic(topic)
    for name, *_ in records._plan(schema):
        for value in _TRICKY * 2:
            try:
                records._check_field(schema, name, value)
                refused = None
            except EventValidationError as exc:
                refused = str(exc)
            try:
                records.check(schema, {name: value})
                got = None
            except EventValidationError as exc:
                got = str(exc)
            assert got == refused, (name, value)
