"""Per-account window of recent transactions and device signals (event time).

The window is a plain dict so a faust table can store it as JSON:
    {"t": {event_id: txn}, "s": {event_id: signal}, "hw": max occurred_at seen,
     "cut": events evicted by the count bound, "cut_ms": newest evicted occurred_at,
     "lo": the oldest occurred_at held, 0 when empty (absent in windows written before it
     was kept: worked out on their next write)}
Events are deduplicated by event_id, expired once older than the lookback behind
the newest event seen (event time, so a replay expires the same events), and
bounded in count (oldest first; the eviction is remembered so briefs can say so).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

Window = dict[str, Any]
TXN = "t"
SIGNAL = "s"


class AddOutcome(StrEnum):
    ADDED = "added"
    DUPLICATE = "duplicate"
    EXPIRED = "expired"  # older than the lookback behind the newest event: nothing to keep


def empty_window() -> Window:
    return {TXN: {}, SIGNAL: {}, "hw": 0, "cut": 0, "cut_ms": 0, "lo": 0}


def add_event(
    window: Window, kind: str, record: dict[str, Any], *, lookback_ms: int, max_events: int
) -> AddOutcome:
    """Add one normalized event in place; expire and bound the window afterwards."""
    event_id = record["event_id"]
    if event_id in window[TXN] or event_id in window[SIGNAL]:
        return AddOutcome.DUPLICATE
    at = int(record["occurred_at"])
    if window["hw"] and at < window["hw"] - lookback_ms:
        return AddOutcome.EXPIRED
    lo = window.get("lo")
    if lo is None:
        lo = _oldest(window)
    window[kind][event_id] = record
    window["lo"] = at if not lo or at < lo else lo
    if at > window["hw"]:  # the horizon moved: events may have fallen behind it
        window["hw"] = at
        if window["lo"] < at - lookback_ms:  # only then is there anything to expire
            expire(window, at - lookback_ms)
    _bound(window, max_events)
    return AddOutcome.ADDED


def expire(window: Window, before_ms: int) -> int:
    """Drop events with occurred_at before `before_ms`; returns how many went."""
    dropped = 0
    for kind in (TXN, SIGNAL):
        events = window[kind]
        if not events:
            continue
        old = [eid for eid, rec in events.items() if rec["occurred_at"] < before_ms]
        for eid in old:
            del events[eid]
        dropped += len(old)
    if dropped:
        window["lo"] = _oldest(window)
    return dropped


def _bound(window: Window, max_events: int) -> None:
    excess = len(window[TXN]) + len(window[SIGNAL]) - max_events
    if excess <= 0:
        return
    everything = [
        (rec["occurred_at"], eid, kind)
        for kind in (TXN, SIGNAL)
        for eid, rec in window[kind].items()
    ]
    everything.sort()
    for at, eid, kind in everything[:excess]:
        del window[kind][eid]
        window["cut"] += 1
        window["cut_ms"] = max(window["cut_ms"], at)
    window["lo"] = _oldest(window)


def _oldest(window: Window) -> int:
    """The oldest occurred_at in the window; 0 when it holds nothing."""
    times = [rec["occurred_at"] for kind in (TXN, SIGNAL) for rec in window[kind].values()]
    return min(times) if times else 0


def size(window: Window) -> int:
    return len(window[TXN]) + len(window[SIGNAL])
