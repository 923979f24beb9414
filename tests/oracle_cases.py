"""The events a case must count, written from the product contract (docs/contract.md, the
team's SPEC.md) and the documented settings (docs/configuration.md), sharing no code with
the worker's windows or case assembly, so a test that compares a brief's `counts` with it
can catch their bugs.

The rules, and where they come from ("The flow" in the contract unless said otherwise):

- Alerts: an alert "opens or joins its case" by `case_id`; every alert of the case
  counts, once per `event_id` (a re-sent alert is the same alert). The brief compared is
  the case's last version: "A later alert on the same case produces a new brief version",
  so the last one is made after the case's last alert.
- Events: the transactions and device signals of the case's account (inputs are keyed
  by `account_id`; the case "is assembled from the account's window"), once per
  `event_id` ("deduplicated by `event_id`").
- Before the alert: LOOKBACK_H (72 h) of event time ("a lookback window (event time,
  default 72 h)"; LOOKBACK_H is the "Event-time window of account history kept and put in
  a case"), measured back from the alert that opened the case. Joining adds an alert
  to a case and takes nothing from it, so a later alert does not move the start.
- Expiry: the account keeps only events within LOOKBACK_H of its newest one ("expired
  when old", read as the second kill -9 test reads it), and the case is made from what
  the account keeps. The newest event taken here is the newest the case itself holds
  (up to the horizon below): which later events had arrived when the brief was made is
  arrival timing, not content. Ambiguous in the contract; in the labelled sets no event
  is near enough to both ends for the choice to change a count.
- After the alert: up to CASE_AFTER_S (600 s) after the last alert, in event time. The
  contract says only that the settle delay (wall-clock) lets late events of the case
  arrive; the horizon and its default are the documented setting ("Event-time horizon
  after the last alert that a case still takes"). A later event is not the case's,
  however soon it arrives.
- At most MAX_EVENTS_PER_ACCOUNT (500) events, the oldest going first ("bounded in
  count"; the documented setting: "Events kept per account; the oldest go").
- An event that arrives after the case was briefed does not re-brief it: the contract
  names a later alert, not a later event, as what makes a new version. A test that
  publishes in event-time order sends every event before any alert after it, so this
  matters only for events after the last alert, which the oracle counts up to the horizon.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

LOOKBACK_H = 72.0
CASE_AFTER_S = 600.0
MAX_EVENTS_PER_ACCOUNT = 500


@dataclass(frozen=True)
class ExpectedCase:
    """Event ids of one case, by kind, and the event time of each."""

    transactions: frozenset[str]
    signals: frozenset[str]
    alerts: frozenset[str]
    at_ms: dict[str, int]

    def counts(self) -> dict[str, int]:
        """In the shape of the brief's `counts`."""
        return {
            "transactions": len(self.transactions),
            "device_signals": len(self.signals),
            "alerts": len(self.alerts),
        }


def at_ms(event: dict[str, Any]) -> int:
    """An event's time in epoch ms (the generated sets carry ISO-8601 strings)."""
    value = event["occurred_at"]
    if isinstance(value, int):
        return value
    return round(datetime.fromisoformat(value).timestamp() * 1000)


def expected_cases(
    transactions: Iterable[dict[str, Any]],
    signals: Iterable[dict[str, Any]],
    alerts: Iterable[dict[str, Any]],
    *,
    lookback_h: float = LOOKBACK_H,
    after_s: float = CASE_AFTER_S,
    max_events: int = MAX_EVENTS_PER_ACCOUNT,
) -> dict[str, ExpectedCase]:
    """Per case_id, the events its last brief must count (rules in the module docstring)."""
    by_case: dict[str, dict[str, dict[str, Any]]] = {}
    for alert in alerts:
        by_case.setdefault(alert["case_id"], {})[alert["event_id"]] = alert
    history = _by_account({"t": transactions, "s": signals})
    out = {}
    for case_id, case_alerts in by_case.items():
        accounts = {a["account_id"] for a in case_alerts.values()}
        assert len(accounts) == 1, f"{case_id} has alerts on several accounts: {accounts}"
        times = [at_ms(a) for a in case_alerts.values()]
        lookback_ms = round(lookback_h * 3600_000)
        end = max(times) + round(after_s * 1000)
        held = [e for e in history.get(accounts.pop(), []) if e[0] <= end]
        if held:
            newest = max(at for at, _, _ in held)
            held = sorted(e for e in held if e[0] >= newest - lookback_ms)[-max_events:]
        held = [e for e in held if e[0] >= min(times) - lookback_ms]
        out[case_id] = ExpectedCase(
            transactions=frozenset(eid for _, kind, eid in held if kind == "t"),
            signals=frozenset(eid for _, kind, eid in held if kind == "s"),
            alerts=frozenset(case_alerts),
            at_ms={eid: at for at, _, eid in held},
        )
    return out


def _by_account(
    kinds: dict[str, Iterable[dict[str, Any]]],
) -> dict[str, list[tuple[int, str, str]]]:
    """(time, kind, event_id) per account, one per event_id."""
    seen: dict[str, tuple[str, int, str]] = {}
    for kind, events in kinds.items():
        for e in events:
            seen.setdefault(e["event_id"], (e["account_id"], at_ms(e), kind))
    out: dict[str, list[tuple[int, str, str]]] = {}
    for eid, (account, at, kind) in seen.items():
        out.setdefault(account, []).append((at, kind, eid))
    return out
