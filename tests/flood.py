"""Records at the contract's size limits, as a payer who controls free text can send them:
every text field 4,000 characters, ids 128. Written from the schema's limits (the
contract), not from the worker's bounds."""

from __future__ import annotations

import random
import string
from typing import Any

TEXT_MAX, ID_MAX = 4000, 128


def _text(rng: random.Random, n: int = TEXT_MAX) -> str:
    words = []
    while sum(len(w) + 1 for w in words) < n:
        words.append("".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9))))
    return " ".join(words)[:n]


def max_transfer(account_id: str, i: int, occurred_at_ms: int, seed: int = 0) -> dict[str, Any]:
    """A contract-valid outbound transfer of about 12 KB of JSON."""
    rng = random.Random(f"{seed}:{account_id}:{i}")
    return {
        "event_id": f"evt-flood-{account_id}-{i:05d}".ljust(ID_MAX, "x")[:ID_MAX],
        "transaction_id": f"txn-flood-{account_id}-{i:05d}",
        "account_id": account_id,
        "occurred_at": occurred_at_ms,
        "amount_minor": 1000 + i,
        "currency": "GBP",
        "direction": "DEBIT",
        "channel": "TRANSFER",
        "status": "APPROVED",
        "merchant_name": _text(rng),
        "counterparty_name": _text(rng),
        "memo": _text(rng),
    }


def max_alert(account_id: str, case_id: str, i: int, occurred_at_ms: int) -> dict[str, Any]:
    rng = random.Random(f"alert:{case_id}:{i}")
    return {
        "event_id": f"evt-flood-alert-{case_id}-{i:05d}",
        "alert_id": f"alr-flood-{case_id}-{i:05d}",
        "case_id": case_id,
        "account_id": account_id,
        "occurred_at": occurred_at_ms,
        "rule_id": "R-FLOOD",
        "rule_name": _text(rng, 200),
        "severity": "HIGH",
        "transaction_ids": [f"txn-{j:06d}".ljust(ID_MAX, "0") for j in range(200)],
        "analyst_note": _text(rng),
    }
