"""Synthetic cases of any size, for prompt-size tests and the LLM benchmark."""

from __future__ import annotations

import time

from streamproc.brief.fallback import build_brief
from streamproc.brief.model import CaseBrief
from streamproc.domain.case import Case, assemble_case
from streamproc.domain.window import TXN, add_event, empty_window


def long_history_case(n: int, now_ms: int | None = None) -> tuple[Case, CaseBrief]:
    """A case with `n` transactions on one account and one alert naming two of them."""
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    window = empty_window()
    for i in range(n):
        add_event(
            window,
            TXN,
            {
                "event_id": f"evt-{i:05d}",
                "transaction_id": f"txn-{i:05d}",
                "account_id": "a",
                "occurred_at": now - (n - i) * 60_000,
                "amount_minor": 1_000 + i,
                "currency": "EUR",
                "direction": "DEBIT",
                "channel": "CARD_PRESENT",
                "status": "APPROVED",
                "merchant_category_code": "5411",
                "merchant_country": "DE",
                "merchant_name": "Rewe",
                "memo": f"groceries {i}",
                "card_pan": "4111111111111111",
            },
            lookback_ms=10**12,
            max_events=20_000,
        )
    alert = {
        "event_id": "evt-alert",
        "alert_id": "alr",
        "case_id": "c",
        "account_id": "a",
        "occurred_at": now,
        "rule_id": "R",
        "rule_name": "r",
        "severity": "HIGH",
        "score": 0.5,
        "transaction_ids": ["txn-00000", f"txn-{n - 1:05d}"],
        "customer_name": "Anna Schmidt",
    }
    case = assemble_case("c", "a", [alert], window, lookback_ms=10**12, after_ms=0)
    return case, build_brief(case, version=1, generated_at_ms=now)
