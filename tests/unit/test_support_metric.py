"""The evaluation's "the cited events support the fact" and draft grounding can fail.

Facts and events are written by hand here, the way an analyst would check a brief: the
amounts, counts, devices and countries a fact states must be in the events it cites.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from streamproc.brief.model import KeyFact
from streamproc.tooling.evaluation.score import score
from streamproc.tooling.evaluation.support import supports

EVENTS: dict[str, dict[str, Any]] = {
    "t1": {"event_id": "t1", "amount_minor": 120_000, "currency": "EUR", "direction": "CREDIT",
           "channel": "TRANSFER", "status": "APPROVED"},
    "t2": {"event_id": "t2", "amount_minor": 80_050, "currency": "EUR", "direction": "CREDIT",
           "channel": "TRANSFER", "status": "APPROVED"},
    "t3": {"event_id": "t3", "amount_minor": 190_000, "currency": "EUR", "direction": "DEBIT",
           "channel": "TRANSFER", "status": "APPROVED"},
    "t4": {"event_id": "t4", "amount_minor": 250, "currency": "EUR", "direction": "DEBIT",
           "channel": "CARD_NOT_PRESENT", "status": "DECLINED", "merchant_name": "shop a",
           "merchant_country": "US"},
    "t5": {"event_id": "t5", "amount_minor": 150, "currency": "EUR", "direction": "DEBIT",
           "channel": "CARD_NOT_PRESENT", "status": "APPROVED", "merchant_name": "shop b",
           "merchant_country": "US"},
    "s1": {"event_id": "s1", "device_id": "dev-emu-7", "signal_type": "NEW_DEVICE",
           "geo_country": "RO"},
    "s2": {"event_id": "s2", "device_id": "dev-home-7", "signal_type": "LOGIN",
           "geo_country": "DE"},
    "a1": {"event_id": "a1", "alert_id": "alr-1", "rule_id": "R-1"},
}  # fmt: skip


@pytest.mark.parametrize(
    ("text", "cited", "ok"),
    [
        ("a transfer of 1,900.00 EUR", ["t3"], True),
        ("a transfer of EUR 1,900", ["t3"], True),  # currency first, no decimals
        ("a transfer of 1,900.01 EUR", ["t3"], False),  # one cent off
        ("a transfer of 1,900.00 EUR", ["t1"], False),  # the amount is in an uncited event
        ("2 credits (2,000.50 EUR) moved out (1,900.00 EUR)", ["t1", "t2", "t3"], True),  # sums
        ("3 credits received", ["t1", "t2"], False),  # counts more than it cites
        ("2 small card-not-present debits at 2 merchants, 1 declined", ["t4", "t5"], True),
        ("2 small card-not-present debits at 2 merchants, 2 declined", ["t4", "t5"], False),
        ("2 debits at 3 merchants", ["t4", "t5"], False),
        ("1 alert(s) on 2 transaction(s)", ["a1", "t4", "t5"], True),
        ("1 new device(s) registered: dev-emu-7", ["s1"], True),
        ("payment from device dev-home-7", ["s1"], False),  # a device no cited event shows
        ("signed in from RO", ["s1"], True),
        ("signed in from DE", ["s1"], False),  # a country no cited event shows
        ("card used in US", ["t4"], True),
        ("anything at all", [], False),  # citing nothing supports nothing
        ("anything at all", ["e-unknown"], False),
    ],
)
def test_support(text: str, cited: list[str], ok: bool) -> None:
    assert supports(text, cited, EVENTS) is ok


def test_draft_grounding_counts_the_draft_before_the_guardrails() -> None:
    """A draft fact citing an event outside the case lowers draft grounding, though the
    guardrails dropped it from the published brief."""
    from tests.unit.test_evaluation import fast_results  # one deterministic result per kind

    r = fast_results()[0]
    cited = r.brief.key_facts[0].evidence_event_ids
    draft = {
        "key_facts": [
            {"text": "grounded", "evidence_event_ids": cited},
            {"text": "made up", "evidence_event_ids": ["evt-not-in-case"]},
            {"text": "cites nothing", "evidence_event_ids": []},
        ]
    }
    metrics, _ = score([dataclasses.replace(r, draft=draft)])
    assert metrics["draft_grounding"] == round(1 / 3, 4)
    assert metrics["evidence_grounding"] == 1.0
    unsupported = r.brief.model_copy(
        update={"key_facts": [KeyFact(text="moved 999,999.99 EUR", evidence_event_ids=cited)]}
    )
    metrics, rows = score([dataclasses.replace(r, brief=unsupported)])
    assert metrics["evidence_support"] == 0.0
    assert rows[0]["unsupported_facts"] == ["moved 999,999.99 EUR"]
