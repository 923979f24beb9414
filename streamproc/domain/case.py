"""A case: the alerts of one case_id and the account's events around them, frozen for briefing."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from streamproc.domain.window import SIGNAL, TXN, Window
from streamproc.network.links import Answered, canonical

BRIEF_ID_NAMESPACE = uuid.UUID("4f7d0a52-8d0e-4e0c-9a51-5e2b8f1c7a11")

Record = dict[str, Any]


@dataclass(frozen=True)
class Case:
    case_id: str
    account_id: str
    alerts: tuple[Record, ...]
    transactions: tuple[Record, ...]
    signals: tuple[Record, ...]
    window_start_ms: int
    window_end_ms: int
    data_gaps: tuple[str, ...] = ()
    event_ids: frozenset[str] = field(default=frozenset(), compare=False)
    missing_transaction_ids: tuple[str, ...] = field(default=(), compare=False)
    # The entity index's answers about the case's entities (network/links.py), and the
    # keyed hash of the surname on its alerts: households are context, not rings.
    links: tuple[Answered, ...] = ()
    family: str | None = field(default=None, compare=False)

    @property
    def alert_ids(self) -> list[str]:
        return [a["alert_id"] for a in self.alerts]

    def content_hash(self) -> str:
        """SHA-256 over what the case is made of: ids only, order-independent."""
        content = {
            "case_id": self.case_id,
            "alerts": sorted(a["event_id"] for a in self.alerts),
            "transactions": sorted(t["event_id"] for t in self.transactions),
            "signals": sorted(s["event_id"] for s in self.signals),
            "gaps": sorted(self.data_gaps),
        }
        linked = canonical(self.links)
        if linked:
            content["links"] = linked
        blob = json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()

    def brief_id(self) -> str:
        """Stable for the same case content, so a replay yields the same id."""
        return str(uuid.uuid5(BRIEF_ID_NAMESPACE, self.content_hash()))


def assemble_case(
    case_id: str,
    account_id: str,
    alerts: Iterable[Record],
    window: Window,
    *,
    lookback_ms: int,
    after_ms: int,
    alerts_trimmed: int = 0,
    alerts_dropped: int = 0,
) -> Case:
    """Freeze the case: alerts, plus the account's events from lookback before the first
    alert to `after_ms` past the last one. Says what is missing in data_gaps, and what
    the state's byte bound left out of its older alerts (domain/bounds.py)."""
    alerts = sorted(alerts, key=lambda a: (a["occurred_at"], a["event_id"]))
    if not alerts:
        raise ValueError("a case needs at least one alert")
    start = alerts[0]["occurred_at"] - lookback_ms
    end = alerts[-1]["occurred_at"] + after_ms
    txns = _in_range(window[TXN].values(), start, end)
    signals = _in_range(window[SIGNAL].values(), start, end)
    missing = _missing_named(alerts, txns)
    gaps = _data_gaps(missing, txns, signals, window, start)
    if alerts_trimmed or alerts_dropped:
        gaps += (
            f"case state bound: {alerts_trimmed} older alert(s) kept without their notes and "
            f"customer details, {alerts_dropped} of the oldest left out, to keep the case "
            "within its state record limit",
        )
    ids = frozenset(r["event_id"] for r in (*alerts, *txns, *signals))
    return Case(case_id, account_id, tuple(alerts), txns, signals, start, end, gaps, ids, missing)


def _missing_named(alerts: list[Record], txns: tuple[Record, ...]) -> tuple[str, ...]:
    have = {t["transaction_id"] for t in txns}
    named = sorted({tid for a in alerts for tid in a.get("transaction_ids") or ()})
    return tuple(tid for tid in named if tid not in have)


def _in_range(records: Iterable[Record], start: int, end: int) -> tuple[Record, ...]:
    picked = [r for r in records if start <= r["occurred_at"] <= end]
    picked.sort(key=lambda r: (r["occurred_at"], r["event_id"]))
    return tuple(picked)


def _data_gaps(
    missing: tuple[str, ...],
    txns: tuple[Record, ...],
    signals: tuple[Record, ...],
    window: Window,
    start: int,
) -> tuple[str, ...]:
    gaps = []
    if missing:
        shown = ", ".join(missing[:10]) + (" …" if len(missing) > 10 else "")
        gaps.append(
            f"{len(missing)} transaction(s) named by the alert not received: {shown} "
            "(late, lost upstream, or older than the lookback the worker keeps, as a "
            "dispute of an old purchase is)"
        )
    if window.get("cut") and window.get("cut_ms", 0) >= start:
        by_size = window.get("cut_size", 0)
        why = (
            f" ({by_size} of them to keep the account's state within its record size limit:"
            " this account's records are unusually large)"
            if by_size
            else ""
        )
        gaps.append(
            f"history cut: {window['cut']} older event(s) of this account were dropped by the "
            f"per-account bound{why}"
        )
    if not txns:
        gaps.append("no transactions in the case window")
    if not signals:
        gaps.append("no device signals in the case window")
    return tuple(gaps)
