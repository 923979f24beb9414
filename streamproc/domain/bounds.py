"""Byte bounds on state values: every value fits the changelog record it is written as.

A window holds up to MAX_EVENTS_PER_ACCOUNT events and a case every alert of its case;
payers control free text (memo, counterparty name) of up to 4,000 characters a field,
so one account's value could grow past the topic's `max.message.bytes`, which Apache
Kafka refuses. A refused changelog record stops the worker, and every worker after it
that reads the same records: someone outside the bank could stop a partition. So a value
over its bound is trimmed, deterministically and saying so:

- a window drops its oldest events, counted with the count bound's (`cut`, `cut_ms`) and
  apart (`cut_size`), so the brief's data gaps say what was left out and why;
- a case entry keeps its newest alerts whole; older alerts lose their free text and PII
  fields and keep the first transaction ids they name (`alerts_trimmed`), and if that is
  not enough the oldest alerts go (`alerts_dropped`).

Sizes are of the JSON the changelog carries (orjson, as engine/state.py writes it).
"""

from __future__ import annotations

from typing import Any

import orjson

from streamproc.domain.window import SIGNAL, TXN, Window

ALERTS_KEPT_WHOLE = 10
ALERT_TEXT_FIELDS = ("analyst_note", "customer_name", "customer_email", "customer_phone")
ALERT_IDS_KEPT = 20  # transaction ids an older alert keeps
ALERT_NAME_KEPT = 200  # characters of an older alert's rule name
MARGIN = 0.98  # trim to a little under the bound, then measure again


def size(value: Any) -> int:
    return len(orjson.dumps(value))


def shrink_window(window: Window, max_bytes: int) -> int:
    """Drop the oldest events until the window's JSON fits `max_bytes`; how many went."""
    total = size(window)
    if total <= max_bytes:
        return 0
    events = sorted(
        (rec["occurred_at"], eid, kind)
        for kind in (TXN, SIGNAL)
        for eid, rec in window[kind].items()
    )
    dropped, target = 0, int(max_bytes * MARGIN)
    for at, eid, kind in events:
        if total <= target:
            break
        record = window[kind].pop(eid)
        total -= size(record) + len(orjson.dumps(eid)) + 2  # the key, ':' and ','
        window["cut"] = window.get("cut", 0) + 1
        window["cut_ms"] = max(window.get("cut_ms", 0), at)
        window["cut_size"] = window.get("cut_size", 0) + 1
        dropped += 1
    remaining = [rec["occurred_at"] for k in (TXN, SIGNAL) for rec in window[k].values()]
    window["lo"] = min(remaining) if remaining else 0
    if size(window) > max_bytes and any(window[k] for k in (TXN, SIGNAL)):
        return dropped + shrink_window(window, max_bytes)  # an estimate was short
    return dropped


def shrink_case(case: dict[str, Any], max_bytes: int) -> int:
    """Make a case entry fit `max_bytes`: older alerts trimmed, then the oldest dropped;
    returns how many alerts were changed."""
    if size(case) <= max_bytes:
        return 0
    alerts: dict[str, Any] = case["alerts"]
    by_age = sorted(alerts, key=lambda eid: (alerts[eid]["occurred_at"], eid))
    older = by_age[:-ALERTS_KEPT_WHOLE]
    changed = 0
    for eid in older:
        if _trim_alert(alerts[eid]):
            case["alerts_trimmed"] = case.get("alerts_trimmed", 0) + 1
            changed += 1
    for eid in by_age[:-1]:  # the newest alert always stays
        if size(case) <= max_bytes:
            break
        del alerts[eid]
        case["alerts_dropped"] = case.get("alerts_dropped", 0) + 1
        changed += 1
    return changed


def _trim_alert(alert: dict[str, Any]) -> bool:
    """Free text and PII out, ids and name shortened; True when anything changed."""
    changed = False
    for name in ALERT_TEXT_FIELDS:
        if alert.get(name) is not None:
            alert[name] = None
            changed = True
    ids = alert.get("transaction_ids") or []
    if len(ids) > ALERT_IDS_KEPT:
        alert["transaction_ids"] = ids[:ALERT_IDS_KEPT]
        changed = True
    rule_name = alert.get("rule_name")
    if isinstance(rule_name, str) and len(rule_name) > ALERT_NAME_KEPT:
        alert["rule_name"] = rule_name[:ALERT_NAME_KEPT]
        changed = True
    return changed
