"""Card testing as it really looks, and its benign lookalikes on both sides of each threshold.

The run the brief-quality issue reported: 40 card-not-present attempts of 1.00–2.50 EUR at
40 different web shops, all merchant category 5999, 32 declined, in 13 minutes, under a
HIGH alert, got a MEDIUM floor: merchants were counted by category.
"""

from __future__ import annotations

from typing import Any

import pytest

from streamproc.brief.fallback import build_brief
from streamproc.brief.model import RiskLevel
from streamproc.domain.case import Case
from streamproc.domain.features import (
    CARD_TESTING_DECLINE_SHARE,
    CARD_TESTING_MANY_MERCHANTS,
    CARD_TESTING_MIN_MERCHANTS,
    CARD_TESTING_MIN_PROBES,
    CARD_TESTING_WINDOW_MS,
    SMALL_AMOUNT_MINOR,
    card_testing,
)

T0 = 1_790_000_000_000
MIN = 60_000


def probe(i: int, *, at: int, merchant: str | None, declined: bool, amount: int = 150,
          channel: str = "CARD_NOT_PRESENT") -> dict[str, Any]:  # fmt: skip
    return {
        "event_id": f"t{i}",
        "transaction_id": f"txn-{i}",
        "account_id": "acct-1",
        "occurred_at": at,
        "amount_minor": amount,
        "currency": "EUR",
        "direction": "DEBIT",
        "channel": channel,
        "status": "DECLINED" if declined else "APPROVED",
        "merchant_name": merchant,
        "merchant_category_code": "5999",
        "merchant_country": "NL",
    }


def case_of(txns: list[dict[str, Any]], severity: str = "HIGH") -> Case:
    alert = {
        "event_id": "a1",
        "alert_id": "a1",
        "case_id": "c1",
        "account_id": "acct-1",
        "occurred_at": T0 + 20 * MIN,
        "rule_id": "R-CT",
        "rule_name": "card testing",
        "severity": severity,
        "score": None,
        "transaction_ids": [t["transaction_id"] for t in txns[:3]],
    }
    txns = sorted(txns, key=lambda t: t["occurred_at"])
    ids = frozenset(t["event_id"] for t in txns) | {"a1"}
    return Case("c1", "acct-1", (alert,), tuple(txns), (), T0 - MIN, T0 + 30 * MIN, (), ids)


def test_the_reported_run_gets_a_high_floor_with_card_testing_and_its_evidence() -> None:
    txns = [
        probe(
            i,
            at=T0 + i * 20_000,  # 40 attempts in 13 minutes
            merchant=f"webshop-{i}.example",
            declined=i % 5 != 0,  # 32 of 40 declined
            amount=100 + (i * 37) % 151,  # 1.00–2.50 EUR
        )
        for i in range(40)
    ]
    assert sum(t["status"] == "DECLINED" for t in txns) == 32
    case = case_of(txns)
    finding = card_testing(case)
    assert finding is not None
    assert set(finding.evidence) == {t["event_id"] for t in txns}
    assert "40 merchants" in finding.text and "32 declined (80%)" in finding.text
    brief = build_brief(case, version=1, generated_at_ms=T0 + 30 * MIN)
    assert brief.risk_level.rank >= RiskLevel.HIGH.rank
    assert "CARD_TESTING" in brief.reason_codes and "BLOCK_CARD" in brief.recommended_actions
    fact = next(f for f in brief.key_facts if "card-not-present" in f.text)
    assert set(fact.evidence_event_ids) == {t["event_id"] for t in txns}


def burst(n: int, merchants: int, declines: int, spacing_ms: int = MIN) -> list[dict[str, Any]]:
    return [
        probe(i, at=T0 + i * spacing_ms, merchant=f"shop-{i % merchants}", declined=i < declines)
        for i in range(n)
    ]


@pytest.mark.parametrize(
    ("txns", "fires"),
    [
        # how many probes
        (burst(CARD_TESTING_MIN_PROBES, 3, 1), True),
        (burst(CARD_TESTING_MIN_PROBES - 1, 3, 1), False),
        # spread over merchants, with a decline among them
        (burst(6, CARD_TESTING_MIN_MERCHANTS, 1), True),
        (burst(6, CARD_TESTING_MIN_MERCHANTS - 1, 1), False),
        (burst(6, CARD_TESTING_MIN_MERCHANTS, 0), False),  # three shops, all approved
        # many merchants, even all approved
        (burst(6, CARD_TESTING_MANY_MERCHANTS, 0), True),
        (burst(6, CARD_TESTING_MANY_MERCHANTS - 1, 0), False),
        # mostly declined, at one merchant
        (burst(6, 1, int(6 * CARD_TESTING_DECLINE_SHARE)), True),
        (burst(6, 1, int(6 * CARD_TESTING_DECLINE_SHARE) - 1), False),
        # in one run, not over a day
        (burst(5, 5, 1, spacing_ms=CARD_TESTING_WINDOW_MS // 4), True),
        (burst(5, 5, 1, spacing_ms=CARD_TESTING_WINDOW_MS // 4 + MIN), False),
    ],
)
def test_near_misses_on_both_sides_of_each_threshold(
    txns: list[dict[str, Any]], fires: bool
) -> None:
    assert (card_testing(case_of(txns)) is not None) is fires


def test_benign_lookalikes_do_not_fire() -> None:
    # In-app purchases: many small payments to one store, approved.
    in_app = [probe(i, at=T0 + i * MIN, merchant="App Store", declined=False) for i in range(9)]
    assert card_testing(case_of(in_app)) is None
    # Small amounts just above the probe bound at many shops, some declined.
    above = [
        probe(i, at=T0 + i * MIN, merchant=f"s{i}", declined=i < 3, amount=SMALL_AMOUNT_MINOR + 1)
        for i in range(8)
    ]
    assert card_testing(case_of(above)) is None
    # Contactless coffee and transit: card present, not card testing.
    present = [
        probe(i, at=T0 + i * MIN, merchant=f"s{i}", declined=i < 3, channel="CARD_PRESENT")
        for i in range(8)
    ]
    assert card_testing(case_of(present)) is None


def test_merchants_are_told_apart_by_name_not_category() -> None:
    same_category = burst(6, 6, 0)
    assert {t["merchant_category_code"] for t in same_category} == {"5999"}
    assert card_testing(case_of(same_category)) is not None
    nameless = [{**t, "merchant_name": None} for t in same_category]  # category + country only
    assert card_testing(case_of(nameless)) is None
