"""Features of a case: each detector returns a Finding that cites the events proving it.

Thresholds are named constants so analysts can read what a reason code means.
All functions are pure and deterministic: same case, same findings, same order.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import statistics
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from streamproc.brief.model import ReasonCode
from streamproc.domain.case import Case, Record
from streamproc.domain.money import fmt_amount

log = logging.getLogger(__name__)
MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS

SMALL_AMOUNT_MINOR = 500  # card testing probes: ≤ 5.00 in the card's currency
CARD_TESTING_MIN_PROBES = 5
CARD_TESTING_MIN_MERCHANTS = 3  # with at least one decline among the probes
CARD_TESTING_MANY_MERCHANTS = 5  # approved or not
CARD_TESTING_DECLINE_SHARE = 0.5  # at any number of merchants
CARD_TESTING_WINDOW_MS = 60 * 60_000  # the probes of one run
VELOCITY_WINDOW_MS = 10 * MINUTE_MS
VELOCITY_MIN_TXNS = 6
HIGH_AMOUNT_RATIO = 5.0  # versus the account's median debit
HIGH_AMOUNT_ABSOLUTE_MINOR = 500_000
HIGH_AMOUNT_MIN_HISTORY = 3
BUST_OUT_MIN_RUN = 3  # large card purchases in a row, the last one named by the alert
BUST_OUT_SPAN_MS = 24 * HOUR_MS  # from the run's first purchase to its last
BUST_OUT_FUNDED_MS = 24 * HOUR_MS  # credits this long before the run that pay for it
PURCHASE_CHANNELS = frozenset({"CARD_PRESENT", "CARD_NOT_PRESENT", "WALLET"})
DEVICE_RISK_SCORE = 0.7
FAILED_AUTH_MIN = 3
TAKEOVER_HORIZON_MS = 24 * HOUR_MS
NEW_PAYEE_HORIZON_MS = 24 * HOUR_MS
IMPOSSIBLE_TRAVEL_MS = 2 * HOUR_MS
MULE_HORIZON_MS = 48 * HOUR_MS
MULE_MIN_SOURCES = 2
MULE_OUT_SHARE = 0.7
RECENT_MS = 24 * HOUR_MS
HIGH_RISK_MCC = frozenset({"4829", "6051", "6540", "7995", "5967"})
CARD_CHANNELS = frozenset({"CARD_NOT_PRESENT", "WALLET"})
TAKEOVER_SIGNALS = frozenset({"PASSWORD_RESET", "PROFILE_CHANGE", "NEW_DEVICE", "MFA_FAILED"})
ALWAYS_FOREIGN = frozenset({"NEW_DEVICE", "MFA_FAILED"})  # whichever device reports them
FAMILIAR_DEVICE_MS = 24 * HOUR_MS  # in use this long before a change: the customer's own
FAILED_AUTH = frozenset({"LOGIN_FAILED", "MFA_FAILED"})


@dataclass(frozen=True)
class Finding:
    reason: ReasonCode
    text: str
    evidence: tuple[str, ...]


def ids(records: Iterable[Record]) -> tuple[str, ...]:
    return tuple(r["event_id"] for r in records)


def alert_transactions(case: Case) -> list[Record]:
    named = {tid for a in case.alerts for tid in a.get("transaction_ids") or ()}
    return [t for t in case.transactions if t["transaction_id"] in named]


def merchant_identity(t: Record) -> str:
    """Who was paid: the merchant's name (folded), else its category and country. Forty
    web shops of one category are forty merchants, not one."""
    name = " ".join(str(t.get("merchant_name") or "").casefold().split())
    if name:
        return name
    return f"mcc {t.get('merchant_category_code') or '?'} in {t.get('merchant_country') or '?'}"


def _densest(txns: list[Record], window_ms: int) -> list[Record]:
    """The most transactions that fit in one window of `window_ms` (by event time)."""
    best: list[Record] = []
    lo = 0
    for hi, t in enumerate(txns):
        while t["occurred_at"] - txns[lo]["occurred_at"] > window_ms:
            lo += 1
        if hi - lo + 1 > len(best):
            best = txns[lo : hi + 1]
    return best


def card_testing(case: Case) -> Finding | None:
    """Small card-not-present attempts in a burst, spread over merchants or mostly
    declined: a stolen card being checked before it is used (or sold).

    Fires on at least CARD_TESTING_MIN_PROBES probes within CARD_TESTING_WINDOW_MS that
    either reach CARD_TESTING_MIN_MERCHANTS distinct merchants with a decline among
    them, reach CARD_TESTING_MANY_MERCHANTS merchants, or are declined in at least
    CARD_TESTING_DECLINE_SHARE of attempts. Small subscription or in-app payments (one
    merchant, approved) and purchases spread over a day do not."""
    probes = [
        t
        for t in case.transactions
        if t["channel"] in CARD_CHANNELS
        and t["direction"] == "DEBIT"
        and t["amount_minor"] <= SMALL_AMOUNT_MINOR
    ]
    burst = _densest(probes, CARD_TESTING_WINDOW_MS)
    if len(burst) < CARD_TESTING_MIN_PROBES:
        return None
    merchants = {merchant_identity(t) for t in burst}
    declined = sum(1 for t in burst if t["status"] == "DECLINED")
    share = declined / len(burst)
    spread = len(merchants) >= CARD_TESTING_MIN_MERCHANTS and declined >= 1
    if not (
        spread
        or len(merchants) >= CARD_TESTING_MANY_MERCHANTS
        or share >= CARD_TESTING_DECLINE_SHARE
    ):
        return None
    span_min = (burst[-1]["occurred_at"] - burst[0]["occurred_at"]) / MINUTE_MS
    return Finding(
        ReasonCode.CARD_TESTING,
        f"{len(burst)} small card-not-present debits (≤ {SMALL_AMOUNT_MINOR / 100:.2f}) at "
        f"{len(merchants)} merchants within {span_min:.0f} min, {declined} declined "
        f"({100 * share:.0f}%)",
        ids(burst),
    )


def velocity_spike(case: Case) -> Finding | None:
    txns = [t for t in case.transactions if t["direction"] == "DEBIT"]
    best = _densest(txns, VELOCITY_WINDOW_MS)
    if len(best) < VELOCITY_MIN_TXNS:
        return None
    return Finding(
        ReasonCode.VELOCITY_SPIKE,
        f"{len(best)} debits within {VELOCITY_WINDOW_MS // MINUTE_MS} minutes",
        ids(best),
    )


def high_amount(case: Case) -> Finding | None:
    flagged = [t for t in alert_transactions(case) if t["direction"] == "DEBIT"]
    if not flagged:
        return None
    run = _large_run(case, flagged)
    if run is not None:
        total = sum(t["amount_minor"] for t in run)
        hours = max(1, -(-(run[-1]["occurred_at"] - run[0]["occurred_at"]) // HOUR_MS))
        return Finding(
            ReasonCode.HIGH_AMOUNT,
            f"{len(run)} card purchases of {fmt_amount(total, run[0]['currency'])} in all "
            f"within {hours} h, each at least {HIGH_AMOUNT_RATIO:.0f}× the median of the "
            "account's earlier debits",
            ids(run),
        )
    top = max(flagged, key=lambda t: t["amount_minor"])
    # Everyday spending: earlier debits the alert does not name. A bust-out's own run of
    # large purchases would otherwise raise the median it is compared with.
    named = {t["event_id"] for t in flagged}
    history = [
        t["amount_minor"]
        for t in case.transactions
        if t["direction"] == "DEBIT"
        and t["event_id"] not in named
        and t["currency"] == top["currency"]
        and t["occurred_at"] < top["occurred_at"]
    ]
    if len(history) >= HIGH_AMOUNT_MIN_HISTORY:
        median = statistics.median(history)
        if median > 0 and top["amount_minor"] >= HIGH_AMOUNT_RATIO * median:
            # The median is over events the fact does not cite, so its amount is not
            # stated: a fact states only what the events it cites can show.
            return Finding(
                ReasonCode.HIGH_AMOUNT,
                f"flagged debit of {fmt_amount(top['amount_minor'], top['currency'])} is "
                f"{top['amount_minor'] / median:.0f}× the median of the account's "
                f"{len(history)} earlier debits in {top['currency']}",
                (top["event_id"],),
            )
        return None
    if top["amount_minor"] >= HIGH_AMOUNT_ABSOLUTE_MINOR:
        return Finding(
            ReasonCode.HIGH_AMOUNT,
            f"flagged debit of {fmt_amount(top['amount_minor'], top['currency'])} with little "
            "history to compare",
            (top["event_id"],),
        )
    return None


def _large_run(case: Case, flagged: list[Record]) -> list[Record] | None:
    """A bust-out's run: at least BUST_OUT_MIN_RUN card purchases in a row, ending at the
    last debit the alert names, within BUST_OUT_SPAN_MS, each HIGH_AMOUNT_RATIO times the
    median of the account's debits before the run (at least HIGH_AMOUNT_MIN_HISTORY of
    them), and not paid for by credits received in the day before it (a salary spent on
    the day). The alert may name only the run's last few: its earlier purchases are then
    not history."""
    named = {t["event_id"] for t in flagged}

    def order(t: Record) -> tuple[int, bool, str]:
        # Same-time debits: those the alert names last, so the run can end at its last.
        return t["occurred_at"], t["event_id"] in named, t["event_id"]

    last = max(flagged, key=order)
    currency = last["currency"]
    # Every debit, any currency or status, in time order: spending in another currency
    # or a declined attempt between the large purchases breaks a run.
    debits = sorted((t for t in case.transactions if t["direction"] == "DEBIT"), key=order)
    debits = debits[: debits.index(last) + 1]
    history = sorted(  # amounts of the approved debits in the currency, before each start
        t["amount_minor"]
        for t in debits[:-1]
        if t["currency"] == currency and t["status"] == "APPROVED"
    )
    best: list[Record] | None = None
    smallest = last["amount_minor"]
    for i in range(len(debits) - 1, -1, -1):
        t = debits[i]
        if last["occurred_at"] - t["occurred_at"] > BUST_OUT_SPAN_MS:
            break
        if t["channel"] not in PURCHASE_CHANNELS or t["currency"] != currency:
            break  # a transfer, a withdrawal, or spending in another currency
        if t["status"] != "APPROVED":
            break  # a declined or reversed attempt is no money spent
        if i < len(debits) - 1:
            history.pop(bisect.bisect_left(history, t["amount_minor"]))  # now in the run
        smallest = min(smallest, t["amount_minor"])
        if len(history) < HIGH_AMOUNT_MIN_HISTORY:
            break
        if smallest < HIGH_AMOUNT_RATIO * history[0]:
            break  # no median of earlier debits is below their minimum: no longer run holds
        if len(debits) - i >= BUST_OUT_MIN_RUN:
            # Against the debits before this start: the longest run that holds wins.
            median = statistics.median(history)
            if median > 0 and smallest >= HIGH_AMOUNT_RATIO * median:
                best = debits[i:]
    if best is None:
        return None
    since = best[0]["occurred_at"] - BUST_OUT_FUNDED_MS
    received = sum(  # money that came in (approved) in the day before the run
        t["amount_minor"]
        for t in case.transactions
        if t["direction"] == "CREDIT"
        and t["status"] == "APPROVED"
        and t["currency"] == currency
        and since <= t["occurred_at"] <= last["occurred_at"]
    )
    return None if received >= sum(t["amount_minor"] for t in best) else best


def new_device(case: Case) -> Finding | None:
    new = [s for s in case.signals if s["signal_type"] == "NEW_DEVICE"]
    if not new:
        return None
    devices = sorted({s["device_id"] for s in new})
    return Finding(
        ReasonCode.NEW_DEVICE,
        f"{len(devices)} new device(s) registered: {', '.join(devices[:3])}",
        ids(new),
    )


def device_risk(case: Case) -> Finding | None:
    risky = [s for s in case.signals if _risky(s)]
    failed = [s for s in case.signals if s["signal_type"] in FAILED_AUTH]
    parts = []
    if any(s.get("is_emulator") for s in risky):
        parts.append("emulator")
    if any(s.get("is_vpn") for s in risky):
        parts.append("VPN")
    if any((s.get("risk_score") or 0.0) >= DEVICE_RISK_SCORE for s in risky):
        parts.append(f"vendor risk score ≥ {DEVICE_RISK_SCORE}")
    evidence = list(risky)
    if len(failed) >= FAILED_AUTH_MIN:
        parts.append(f"{len(failed)} failed logins/MFA")
        evidence += failed
    if not parts:
        return None
    return Finding(
        ReasonCode.DEVICE_RISK,
        "device risk: " + ", ".join(parts),
        ids(
            sorted(
                {r["event_id"]: r for r in evidence}.values(),
                key=lambda r: (r["occurred_at"], r["event_id"]),
            )
        ),
    )


def _physical(case: Case) -> list[tuple[int, str, str]]:
    """(time, country, event_id) where the card itself was: card present, ATM."""
    return sorted(
        (t["occurred_at"], t["merchant_country"], t["event_id"])
        for t in case.transactions
        if t["channel"] in {"CARD_PRESENT", "ATM"} and t.get("merchant_country")
    )


def _online(case: Case) -> list[tuple[int, str, str]]:
    """(time, country, event_id) where a session's IP was placed (VPNs excluded)."""
    return sorted(
        (s["occurred_at"], s["geo_country"], s["event_id"])
        for s in case.signals
        if s.get("geo_country") and not s.get("is_vpn")
    )


def _located(case: Case) -> list[tuple[int, str, str]]:
    """(time, country, event_id) for events that place the customer somewhere."""
    return sorted(_physical(case) + _online(case))


def geo_mismatch(case: Case) -> Finding | None:
    points = _located(case)
    anchor = case.alerts[-1]["occurred_at"]
    older = [c for at, c, _ in points if at < anchor - RECENT_MS]
    home_pool = older or [c for _, c, _ in points]
    if not home_pool:
        return None
    home = Counter(home_pool).most_common(1)[0][0]
    away = [(at, c, eid) for at, c, eid in points if at >= anchor - RECENT_MS and c != home]
    if not away:
        return None
    countries = sorted({c for _, c, _ in away})
    # The latest event at home before the first one away shows where "usual" was.
    before = [eid for at, c, eid in points if c == home and at < away[0][0]]
    return Finding(
        ReasonCode.GEO_MISMATCH,
        f"activity from {', '.join(countries)} while the account's usual country is {home}",
        (*before[-1:], *(eid for _, _, eid in away)),
    )


def impossible_travel(case: Case) -> Finding | None:
    """Two places too far apart in time, judged within one kind of evidence: the card
    itself (card present, ATM: a cloned card) or session IPs (logins: a second person).
    A login abroad next to a card payment at home is not enough: IP geolocation places
    roaming phones, relays and corporate networks elsewhere, and a family member may
    hold the card; GEO_MISMATCH tells that story."""
    for kind, points in (("card used", _physical(case)), ("signed in", _online(case))):
        for (t1, c1, e1), (t2, c2, e2) in itertools.pairwise(points):
            if c1 != c2 and t2 - t1 <= IMPOSSIBLE_TRAVEL_MS:
                return Finding(
                    ReasonCode.IMPOSSIBLE_TRAVEL,
                    f"{kind} in {c1} then in {c2} within {(t2 - t1) / MINUTE_MS:.0f} minutes",
                    (e1, e2),
                )
    return None


def _outbound_transfers(case: Case) -> list[Record]:
    return [
        t
        for t in case.transactions
        if t["direction"] == "DEBIT" and t["channel"] == "TRANSFER" and t["status"] != "DECLINED"
    ]


def _risky(s: Record) -> bool:
    return bool(
        s.get("is_emulator") or s.get("is_vpn") or (s.get("risk_score") or 0.0) >= DEVICE_RISK_SCORE
    )


def _foreign_changes(case: Case) -> list[Record]:
    """Credential or device changes an intruder would make: a new device or failed MFA
    always; a password reset or profile change only from a device the account had not
    been using for FAMILIAR_DEVICE_MS before it, or one flagged risky. A customer who
    resets a forgotten password on their own phone is not taken over; an intruder who
    signs in on their own device minutes before the reset is."""
    first_seen: dict[str, int] = {}
    for r in (*case.signals, *case.transactions):
        device = r.get("device_id")
        if device:
            first_seen[device] = min(first_seen.get(device, r["occurred_at"]), r["occurred_at"])
    return [
        s
        for s in case.signals
        if s["signal_type"] in TAKEOVER_SIGNALS
        and (
            s["signal_type"] in ALWAYS_FOREIGN
            or _risky(s)
            or s["occurred_at"] - first_seen[s["device_id"]] < FAMILIAR_DEVICE_MS
        )
    ]


def account_takeover(case: Case) -> Finding | None:
    """A foreign credential or device change (see `_foreign_changes`) followed within
    TAKEOVER_HORIZON_MS by a payee added or money sent out: the intruder's cash-out."""
    changes = _foreign_changes(case)
    if not changes:
        return None
    first = changes[0]["occurred_at"]
    payees = [
        s
        for s in case.signals
        if s["signal_type"] == "PAYEE_ADDED"
        and first <= s["occurred_at"] <= first + TAKEOVER_HORIZON_MS
    ]
    outs = [
        t
        for t in _outbound_transfers(case)
        if first <= t["occurred_at"] <= first + TAKEOVER_HORIZON_MS
    ]
    if not payees and not outs:
        return None
    kinds = sorted({s["signal_type"] for s in changes})
    then = []
    if payees:
        then.append(f"{len(payees)} payee(s) added")
    if outs:
        then.append(f"{len(outs)} outbound transfer(s)")
    return Finding(
        ReasonCode.ACCOUNT_TAKEOVER,
        f"credential/device change ({', '.join(kinds)}) from an unfamiliar or risky device "
        "followed within 24 h by " + " and ".join(then),
        ids(changes) + ids(payees) + ids(outs),
    )


def new_payee(case: Case) -> Finding | None:
    for payee in (s for s in case.signals if s["signal_type"] == "PAYEE_ADDED"):
        outs = [
            t
            for t in _outbound_transfers(case)
            if payee["occurred_at"]
            <= t["occurred_at"]
            <= payee["occurred_at"] + NEW_PAYEE_HORIZON_MS
        ]
        if outs:
            total = sum(t["amount_minor"] for t in outs)
            return Finding(
                ReasonCode.NEW_PAYEE,
                f"payee added, then {len(outs)} transfer(s) totalling "
                f"{fmt_amount(total, outs[0]['currency'])} within 24 h",
                (payee["event_id"], *ids(outs)),
            )
    return None


def mule_activity(case: Case) -> Finding | None:
    credits = [
        t for t in case.transactions if t["direction"] == "CREDIT" and t["status"] == "APPROVED"
    ]
    sources = {
        t.get("counterparty_iban") or t.get("counterparty_name") or t["transaction_id"]
        for t in credits
    }
    if len(credits) < MULE_MIN_SOURCES or len(sources) < MULE_MIN_SOURCES:
        return None
    first_in = credits[0]["occurred_at"]
    inbound = sum(t["amount_minor"] for t in credits)
    outs = [
        t
        for t in _outbound_transfers(case)
        if first_in <= t["occurred_at"] <= first_in + MULE_HORIZON_MS
    ]
    outbound = sum(t["amount_minor"] for t in outs)
    if not outs or inbound == 0 or outbound < MULE_OUT_SHARE * inbound:
        return None  # zero-amount credits move nothing: no mule pattern to speak of
    cur = credits[0]["currency"]
    return Finding(
        ReasonCode.MULE_ACTIVITY,
        f"{len(credits)} credits from {len(sources)} sources "
        f"({fmt_amount(inbound, cur)}) moved out within 48 h "
        f"({fmt_amount(outbound, cur)}, {100 * outbound / inbound:.0f}%)",
        ids(credits) + ids(outs),
    )


def merchant_risk(case: Case) -> Finding | None:
    risky = [t for t in case.transactions if t.get("merchant_category_code") in HIGH_RISK_MCC]
    if not risky:
        return None
    mccs = sorted({t["merchant_category_code"] for t in risky})
    return Finding(
        ReasonCode.MERCHANT_RISK,
        f"{len(risky)} transaction(s) at high-risk merchant categories (MCC {', '.join(mccs)})",
        ids(risky),
    )


DETECTORS: tuple[Callable[[Case], Finding | None], ...] = (
    card_testing,
    account_takeover,
    mule_activity,
    impossible_travel,
    velocity_spike,
    high_amount,
    device_risk,
    new_device,
    new_payee,
    geo_mismatch,
    merchant_risk,
)


def find_all(case: Case, failed: list[str] | None = None) -> list[Finding]:
    """Every finding of the case, in a fixed order (strongest patterns first).

    A detector that raises is a bug, never the case's fault: it is logged, its name is
    appended to `failed` (the brief lists it as a data gap, /metrics counts it) and the
    other detectors still run, so the alert still gets its brief."""
    findings = []
    for detector in DETECTORS:
        try:
            finding = detector(case)
        except Exception:
            log.exception("detector failed", extra={"detector": detector.__name__})
            if failed is not None:
                failed.append(detector.__name__)
            continue
        if finding is not None:
            findings.append(finding)
    return findings
