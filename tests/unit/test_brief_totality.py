"""Every alert gets a brief: the deterministic brief is total over contract-valid cases.

Records are drawn from the Avro schemas' own value space (types, enums, nullable
unions, arrays read from schemas/*.avsc), kept when the contract's checks accept them
(`from_json`, the same gate `publish` and the worker use), assembled into a case as
the worker does, briefed, and the brief encoded for the topic. Nothing may raise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from streamproc.brief.fallback import build_brief
from streamproc.brief.model import CaseBrief
from streamproc.contracts.codec import AvroCodec
from streamproc.contracts.records import from_json
from streamproc.contracts.schemas import SchemaSet
from streamproc.domain.case import Case, assemble_case
from streamproc.domain.window import SIGNAL, TXN, add_event, empty_window
from streamproc.errors import EventValidationError
from tests.conftest import ALERT_TOPIC, NOW_MS, SIG_TOPIC, TXN_TOPIC

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
HOUR = 3_600_000
LOOKBACK, AFTER = 72 * HOUR, 600_000
ACCOUNT = "acct-1"
TXN_IDS = [f"txn-{i}" for i in range(6)]
# Values with a contract pattern are drawn from it; anything else from the Avro type.
SHAPED = {
    "currency": st.sampled_from(["EUR", "USD", "GBP", "JPY", "XAU", "ZZZ"]),
    "merchant_country": st.sampled_from(["DE", "FR", "US", "GB", "ZZ"]),
    "geo_country": st.sampled_from(["DE", "FR", "US", "GB", "ZZ"]),
    "merchant_category_code": st.sampled_from(["5999", "4829", "0000", "9999", "6051"]),
    "account_id": st.just(ACCOUNT),
    "transaction_id": st.sampled_from(TXN_IDS),
    "transaction_ids": st.lists(st.sampled_from([*TXN_IDS, "txn-missing"]), max_size=8),
    "amount_minor": st.one_of(st.just(0), st.integers(0, 10**13), st.integers(0, 1000)),
    "occurred_at": st.integers(NOW_MS - 80 * HOUR, NOW_MS),
    "score": st.one_of(st.none(), st.floats(0, 1)),
    "risk_score": st.one_of(st.none(), st.floats(0, 1)),
}
TEXT = st.text(max_size=60)


def of_type(avro: Any) -> st.SearchStrategy[Any]:
    """Values of an Avro type, as the JSON form carries them."""
    if isinstance(avro, list):
        return st.one_of(*(of_type(t) for t in avro))
    if isinstance(avro, dict):
        kind = avro["type"]
        if kind == "enum":
            return st.sampled_from(avro["symbols"])
        if kind == "array":
            return st.lists(of_type(avro["items"]), max_size=5)
        return of_type(kind)
    return {
        "null": st.none(),
        "string": TEXT,
        "long": st.integers(-(2**63), 2**63 - 1),
        "int": st.integers(-(2**31), 2**31 - 1),
        "double": st.floats(allow_nan=True),
        "boolean": st.booleans(),
    }[avro]


def record_of(
    schema_file: str, **over: st.SearchStrategy[Any]
) -> st.SearchStrategy[dict[str, Any]]:
    fields = json.loads((SCHEMAS / schema_file).read_text())["fields"]
    shaped = {**SHAPED, **over}
    return st.fixed_dictionaries(
        {f["name"]: shaped.get(f["name"], of_type(f["type"])) for f in fields}
    )


# Edge amounts for a whole case at once (all zero, all equal), where ratios degenerate.
AMOUNTS = st.sampled_from([st.just(0), st.just(1), st.just(10**13), SHAPED["amount_minor"]])
TRANSACTIONS = AMOUNTS.flatmap(
    lambda amounts: st.lists(
        record_of("transaction.avsc", amount_minor=amounts), min_size=4, max_size=25
    )
)


def checked(topic: str, raw: dict[str, Any], schemas: SchemaSet) -> dict[str, Any] | None:
    try:
        return from_json(schemas.for_topic(topic), raw, now_ms=NOW_MS)
    except EventValidationError:
        return None  # not contract-valid: the DLQ's business, not the brief's


SCHEMA_SET = SchemaSet()
ALERT = {
    "event_id": "a1",
    "alert_id": "a1",
    "case_id": "c1",
    "account_id": ACCOUNT,
    "occurred_at": NOW_MS,
    "rule_id": "R",
    "rule_name": "r",
    "severity": "CRITICAL",
    "transaction_ids": [],
}
CODEC = AvroCodec(SCHEMA_SET)


@settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(
    txns=TRANSACTIONS,
    signals=st.lists(record_of("device_signal.avsc"), max_size=12),
    alerts=st.lists(
        record_of("alert.avsc", occurred_at=st.integers(NOW_MS - HOUR, NOW_MS)),
        min_size=1,
        max_size=3,
    ),
)
def test_any_contract_valid_case_gets_a_brief(
    txns: list[dict[str, Any]], signals: list[dict[str, Any]], alerts: list[dict[str, Any]]
) -> None:
    window = empty_window()
    for kind, topic, raws in ((TXN, TXN_TOPIC, txns), (SIGNAL, SIG_TOPIC, signals)):
        for i, raw in enumerate(raws):
            record = checked(topic, {**raw, "event_id": f"{kind}-{i}"}, SCHEMA_SET)
            if record is not None:
                add_event(window, kind, record, lookback_ms=LOOKBACK, max_events=500)
    valid = [checked(ALERT_TOPIC, {**a, "event_id": f"alert-{i}"}, SCHEMA_SET) for i, a in
             enumerate(alerts)]  # fmt: skip
    valid_alerts = [a for a in valid if a is not None]
    assume(valid_alerts)
    case: Case = assemble_case(
        "case-1", ACCOUNT, valid_alerts, window, lookback_ms=LOOKBACK, after_ms=AFTER
    )
    failed: list[str] = []
    brief = build_brief(case, version=1, generated_at_ms=NOW_MS, failed=failed)
    assert isinstance(brief, CaseBrief)
    assert failed == []  # no detector raised on a valid case
    CODEC.encode("fraud.case-briefs.v1", brief.to_avro())  # and it goes onto the topic


def test_zero_amount_credits_are_no_mule_pattern_and_raise_nothing() -> None:
    """The case the issue found: a zero-amount credit divided by zero in the mule detector."""
    credits = [
        {"direction": "CREDIT", "amount_minor": 0, "counterparty_name": f"s{i}"} for i in range(3)
    ]
    out = {"direction": "DEBIT", "channel": "TRANSFER", "amount_minor": 0}
    base = {
        "transaction_id": "txn-0",
        "account_id": ACCOUNT,
        "currency": "EUR",
        "channel": "TRANSFER",
        "status": "APPROVED",
    }
    window = empty_window()
    for i, over in enumerate([*credits, out]):
        raw = {**base, **over, "event_id": f"t{i}", "occurred_at": NOW_MS - 60_000 * (5 - i)}
        record = checked(TXN_TOPIC, raw, SCHEMA_SET)
        assert record is not None
        add_event(window, TXN, record, lookback_ms=LOOKBACK, max_events=500)
    alert = checked(ALERT_TOPIC, {**ALERT, "severity": "HIGH"}, SCHEMA_SET)
    assert alert is not None
    case = assemble_case("c1", ACCOUNT, [alert], window, lookback_ms=LOOKBACK, after_ms=AFTER)
    failed: list[str] = []
    brief = build_brief(case, version=1, generated_at_ms=NOW_MS, failed=failed)
    assert failed == [] and "MULE_ACTIVITY" not in brief.reason_codes


def test_a_failing_detector_is_a_data_gap_not_an_exception(monkeypatch: Any) -> None:
    from streamproc.domain import features

    def broken(case: Case) -> None:
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(features, "DETECTORS", (broken, *features.DETECTORS))
    record = checked(ALERT_TOPIC, ALERT, SCHEMA_SET)
    assert record is not None
    case = assemble_case(
        "c1", ACCOUNT, [record], empty_window(), lookback_ms=LOOKBACK, after_ms=AFTER
    )
    failed: list[str] = []
    brief = build_brief(case, version=1, generated_at_ms=NOW_MS, failed=failed)
    assert failed == ["broken"]
    assert any("detector broken failed" in gap for gap in brief.data_gaps)
    assert "RULE_HIT" in brief.reason_codes  # the other detectors and the rule still count
