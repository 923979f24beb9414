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


def test_the_window_holds_what_a_plain_replay_of_its_rules_holds() -> None:
    """Oracle for the shortcuts in add_event (expiry only when the horizon moves past the
    oldest event held; the oldest kept in "lo"): a naive model written here from the rules
    (keep events within LOOKBACK of the newest seen, drop the oldest beyond the bound,
    reject an event already behind the horizon), replayed on random out-of-order input,
    including windows written before "lo" was kept."""
    import random

    rng = random.Random(7)
    for trial in range(200):
        bound = rng.choice([3, 5, 50])
        w, model, newest, cut = empty_window(), {}, 0, 0
        for i in range(rng.randint(1, 60)):
            at = rng.randint(0, 10 * 24) * H // 2 + 946_684_800_000
            kind = rng.choice([TXN, SIGNAL])
            if i == 5 and trial % 2:
                del w["lo"]  # a window from an older release
            outcome = add(w, f"e{i}", at, kind, max_events=bound)
            if newest and at < newest - LOOKBACK:
                assert outcome is AddOutcome.EXPIRED
                continue
            assert outcome is AddOutcome.ADDED
            model[f"e{i}"] = (at, kind)
            newest = max(newest, at)
            model = {e: v for e, v in model.items() if v[0] >= newest - LOOKBACK}
            while len(model) > bound:
                oldest = min(model, key=lambda e: (model[e][0], e))
                del model[oldest]
                cut += 1
            held = {e: (r["occurred_at"], k) for k in (TXN, SIGNAL) for e, r in w[k].items()}
            assert held == model
            assert w["cut"] == cut
            assert w["lo"] == min((v[0] for v in model.values()), default=0)
