"""Per-account window: dedupe, event-time expiry, out-of-order placement, count bound."""

from __future__ import annotations

from typing import Any

from streamproc.domain.window import SIGNAL, TXN, AddOutcome, add_event, empty_window, size

H = 3_600_000
LOOKBACK = 72 * H


def ev(eid: str, at: int) -> dict[str, Any]:
    return {"event_id": eid, "occurred_at": at}


def add(w: dict[str, Any], eid: str, at: int, kind: str = TXN, max_events: int = 100) -> AddOutcome:
    return add_event(w, kind, ev(eid, at), lookback_ms=LOOKBACK, max_events=max_events)


def test_duplicates_are_ignored_across_kinds() -> None:
    w = empty_window()
    assert add(w, "e1", 10 * H) is AddOutcome.ADDED
    assert add(w, "e1", 10 * H) is AddOutcome.DUPLICATE
    assert add(w, "e1", 11 * H, kind=SIGNAL) is AddOutcome.DUPLICATE
    assert size(w) == 1


def test_expiry_follows_event_time_not_arrival() -> None:
    w = empty_window()
    add(w, "old", 1 * H)
    add(w, "mid", 50 * H)
    add(w, "new", 74 * H)  # pushes the window start to 2 h: "old" leaves
    assert set(w[TXN]) == {"mid", "new"}
    assert add(w, "late-but-in", 3 * H) is AddOutcome.ADDED  # out of order, still inside
    assert add(w, "too-late", 1 * H) is AddOutcome.EXPIRED
    assert "too-late" not in w[TXN]


def test_bound_drops_oldest_and_remembers_the_cut() -> None:
    w = empty_window()
    for i in range(12):
        add(w, f"e{i:02d}", (i + 1) * H, max_events=10)
    assert size(w) == 10
    assert "e00" not in w[TXN] and "e01" not in w[TXN] and "e11" in w[TXN]
    assert w["cut"] == 2 and w["cut_ms"] == 2 * H


def test_bound_counts_signals_and_transactions_together() -> None:
    w = empty_window()
    for i in range(6):
        add(w, f"t{i}", (i + 1) * H, max_events=10)
        add(w, f"s{i}", (i + 1) * H + 1, kind=SIGNAL, max_events=10)
    assert size(w) == 10 and w["cut"] == 2
