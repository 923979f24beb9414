"""The oracle "the cited events support the fact", read from the text as an analyst reads it.

Every amount, count, device and country a fact states must be found in the events it
cites; independently of the detectors that wrote the deterministic facts.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

_AMOUNT = re.compile(r"(?<![\w.,])(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?\s?([A-Z]{3})\b")
_AMOUNT_BEFORE = re.compile(r"\b([A-Z]{3})\s?(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(?![\d,])")
_COUNT = re.compile(
    r"\b(\d+)\s+(?:small\s+)?(?:card-not-present\s+|outbound\s+|new\s+)?"
    r"(debit|credit|transaction|transfer|alert|payee|device|merchant)(?:s|\(s\))?\b",
    re.IGNORECASE,
)
_ZERO_DECIMAL = {"JPY": 0, "KRW": 0, "ISK": 0, "CLP": 0, "VND": 0}  # else 2 decimals
_DECLINED = re.compile(r"\b(\d+)\s+declined\b", re.IGNORECASE)
_CODE2 = re.compile(r"\b[A-Z]{2}\b")


def supports(text: str, cited: list[str], events: dict[str, dict[str, Any]]) -> bool:
    """Do the events a fact cites show what it states? Amounts: a cited amount, or the
    sum of the cited credits or debits. Counts of debits, credits, transactions,
    transfers, alerts, payees, devices, merchants and declines: at least that many
    cited. Device ids and country codes that occur in the case: present in a cited
    event. A fact citing nothing that exists supports nothing."""
    shown = [events[e] for e in cited if e in events]
    if not shown:
        return False
    txns = [e for e in shown if "amount_minor" in e]
    stated = {(t["amount_minor"], t["currency"]) for t in txns}
    for d in ("DEBIT", "CREDIT"):
        for cur in {t["currency"] for t in txns}:
            total = sum(
                t["amount_minor"] for t in txns if t["direction"] == d and t["currency"] == cur
            )
            stated.add((total, cur))
    currencies = {e["currency"] for e in events.values() if "currency" in e}
    for units, frac, cur in _amounts(text):
        value = Decimal(units.replace(",", "") + "." + (frac or "0"))
        minor = value * 10 ** _ZERO_DECIMAL.get(cur, 2)
        if cur in currencies and (minor, cur) not in stated:
            return False
    kinds = {
        "debit": [t for t in txns if t["direction"] == "DEBIT"],
        "credit": [t for t in txns if t["direction"] == "CREDIT"],
        "transaction": txns,
        "transfer": [t for t in txns if t["channel"] == "TRANSFER"],
        "alert": [e for e in shown if "alert_id" in e],
        "payee": [e for e in shown if e.get("signal_type") == "PAYEE_ADDED"],
        "device": [e for e in shown if e.get("signal_type") == "NEW_DEVICE"],
    }
    merchants = {(t.get("merchant_name") or "").casefold() for t in txns}
    for n, noun in _COUNT.findall(text):
        noun = noun.lower()
        have = len(merchants - {""}) if noun == "merchant" else len(kinds[noun])
        if have < int(n):
            return False
    for n in _DECLINED.findall(text):
        if sum(1 for t in txns if t.get("status") == "DECLINED") < int(n):
            return False
    devices = {e.get("device_id") for e in events.values()} - {None}
    cited_devices = {e.get("device_id") for e in shown}
    for token in re.findall(r"[\w.:-]+", text):
        if token.strip(".:") in devices and token.strip(".:") not in cited_devices:
            return False
    countries = {c for e in events.values() for c in _countries(e)}
    cited_countries = {c for e in shown for c in _countries(e)}
    return all(code not in countries or code in cited_countries for code in _CODE2.findall(text))


def _amounts(text: str) -> list[tuple[str, str, str]]:
    after = [(u, f, c) for u, f, c in _AMOUNT.findall(text) if c != "MIN"]
    before = [(u, f, c) for c, u, f in _AMOUNT_BEFORE.findall(text)]
    return after + before


def _countries(e: dict[str, Any]) -> list[str]:
    return [c for c in (e.get("merchant_country"), e.get("geo_country")) if c]
