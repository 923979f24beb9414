"""The claim checker: the "checker" half of maker-checker, run on every model brief.

The model writes prose; the checker reads each sentence of its summary and of each of
its facts as claims about the events and tests every claim against them: for a fact,
the events it cites; for the summary, the case's events (a count or a sum may also be
that of one fact's events). Claims it reads (CLAIM_KINDS):

- amount: "1,234.56 EUR", "EUR 1,234", "€12k": one event's amount, or the sum of a run
  of events of one direction and currency, to the precision written;
- count: "3 declined payments", "two new devices", "at 4 merchants": the number of such
  events (or distinct devices, merchants, payees, senders, countries) among the cited
  events, or the case's; with a qualifier it cannot read ("small"), at most that many;
- kind: card not present or present, transfer, ATM, wallet, credit or debit, declined,
  login, failed login, password reset, MFA, profile change, payee added, emulator, VPN,
  device: some event in scope is of that kind; "no device signal": none in the case;
- novelty: "new", "newly seen", "unrecognised" device: a NEW_DEVICE signal for a device
  in scope, or a device first seen in the case less than a day before its last use;
- country: a name or an ISO code seen on an event in scope;
- merchant: an MCC, or a category (electronics, jewellery, gambling, crypto, ...), on a
  transaction in scope;
- span: "within 10 minutes" (the events counted in the sentence, or those in scope, fit
  in it), "25 min before" (two events in scope that far apart), and dates and times
  (an event of the case, or the case window's bounds);
- typology: card testing, takeover, mule, APP scam, bust-out, ...: a reason code of the
  published brief that shows it; one no event can show (phishing, romance scam) is cut.

A sentence with a false claim is cut. Separately, prose that argues a level, score or
confidence other than the published one ("low risk", "3/100", "likely a false positive",
"no action needed") is an argument, not a claim to cut: the caller overrules the draft.

The checker shares no code with the deterministic generator or its detectors: it reads
records and the brief model's enums, and its own tables (babel for country names and
currency minor units).
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any

from babel import Locale
from babel.numbers import get_currency_precision, list_currencies

from streamproc.brief.model import Confidence, ReasonCode, RiskLevel

Record = dict[str, Any]  # an event as decoded (the checker reads fields, never writes)
Event = tuple[str, Record]  # (kind, record): kind is "transaction", "signal" or "alert"

# The bounded label set of streamproc_claims_cut_total{kind} and the audit's claim_cuts.
CLAIM_KINDS = (
    "amount",
    "count",
    "kind",
    "novelty",
    "country",
    "merchant",
    "span",
    "typology",
)
# What prose may argue against the published brief (the draft is then overruled).
ARGUMENTS = ("level", "score", "confidence", "dismissal")
MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
NEW_DEVICE_UNSEEN = 2 * DAY  # a device the case's window did not see for this long …
NEW_DEVICE_WITHIN = HOUR  # … and first seen this shortly before its use: new

NUMBER_WORDS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "a dozen": 12,
    "a single": 1, "single": 1, "a couple of": 2, "zero": 0,
}  # fmt: skip
_NUM = r"(?:\d+|" + "|".join(sorted(map(re.escape, NUMBER_WORDS), key=len, reverse=True)) + r")"
NEGATIONS = frozenset(
    {"no", "not", "without", "never", "none", "zero", "nor", "neither", "lacks", "absent"}
)


def _number(text: str) -> int:
    text = text.lower()
    return int(text) if text.isdigit() else NUMBER_WORDS[text]


# --- events in scope --------------------------------------------------------------------


def _txn(k: str, r: Record) -> bool:
    return k == "transaction"


def _signal(k: str, r: Record) -> bool:
    return k == "signal"


def _alert(k: str, r: Record) -> bool:
    return k == "alert"


def _channel(*names: str) -> Callable[[str, Record], bool]:
    return lambda k, r: k == "transaction" and r.get("channel") in names


def _direction(name: str) -> Callable[[str, Record], bool]:
    return lambda k, r: k == "transaction" and r.get("direction") == name


def _status(name: str) -> Callable[[str, Record], bool]:
    return lambda k, r: k == "transaction" and r.get("status") == name


def _signal_type(*names: str) -> Callable[[str, Record], bool]:
    return lambda k, r: k == "signal" and r.get("signal_type") in names


def _flag(name: str) -> Callable[[str, Record], bool]:
    return lambda k, r: k == "signal" and bool(r.get(name))


def _device(k: str, r: Record) -> bool:
    return k in ("signal", "transaction") and bool(r.get("device_id"))


def _declined(k: str, r: Record) -> bool:
    if k == "transaction":
        return r.get("status") == "DECLINED"
    return k == "signal" and r.get("signal_type") in ("LOGIN_FAILED", "MFA_FAILED")


def _any(*preds: Callable[[str, Record], bool]) -> Callable[[str, Record], bool]:
    return lambda k, r: any(p(k, r) for p in preds)


@dataclass(frozen=True)
class Rx:
    """A pattern and the lowercase strings one of which any match contains: a sentence
    holding none of them is not searched (most sentences hold few kinds of claim)."""

    pattern: re.Pattern[str]
    hints: tuple[str, ...]

    def finditer(self, text: str, low: str) -> Iterator[re.Match[str]]:
        if any(h in low for h in self.hints):
            return self.pattern.finditer(text)
        return iter(())


def _rx(pattern: str, *hints: str) -> Rx:
    return Rx(re.compile(pattern, re.IGNORECASE), hints)


# Kinds of event a phrase names: (pattern, predicate). Checked for existence in scope;
# negated ("no device signal"), for absence in the whole case.
KIND_PHRASES: tuple[tuple[Rx, Callable[[str, Record], bool]], ...] = (
    (_rx(r"card[- _]not[- _]present|\bCNP\b|e-?commerce", "not", "cnp", "commerce"),
     _channel("CARD_NOT_PRESENT", "WALLET")),
    (_rx(r"(?<!not )(?<!not-)(?<!not_)\bcard[- _]present|in[- ]store|point[- ]of[- ]sale",
         "present", "store", "sale"), _channel("CARD_PRESENT")),
    (_rx(r"\bATMs?\b|cash withdrawals?", "atm", "withdrawal"), _channel("ATM")),
    (_rx(r"\bwallet\b", "wallet"), _channel("WALLET")),
    (_rx(r"\btransfers?\b|\bwires?\b", "transfer", "wire"), _channel("TRANSFER")),
    (_rx(r"\bcredits?\b(?![- ]card)|\bincoming\b|\binbound\b|\bdeposits?\b",
         "credit", "incoming", "inbound", "deposit"), _direction("CREDIT")),
    (_rx(r"\bdebits?\b(?![- ]card)|\boutgoing\b|\boutbound\b", "debit", "outgoing", "outbound"),
     _direction("DEBIT")),
    (_rx(r"\bdeclin(?:e|es|ed)\b", "declin"), _status("DECLINED")),
    (_rx(r"\brefund(?:s|ed)?\b|\brevers(?:al|als|ed)\b", "refund", "revers"),
     _status("REVERSED")),
    (_rx(r"failed (?:log-?ins?|sign-?ins?)\b(?!/MFA)|log-?in failures?|LOGIN_FAILED", "fail"),
     _signal_type("LOGIN_FAILED")),
    (_rx(r"failed (?:log-?ins?|sign-?ins?)/MFA", "fail"),
     _signal_type("LOGIN_FAILED", "MFA_FAILED")),
    (_rx(r"\blog-?ins?\b|\bsign-?ins?\b|\blogged in\b|\bLOGIN\b", "log", "sign"),
     _signal_type("LOGIN", "LOGIN_FAILED")),
    (_rx(r"password[- _]resets?|reset (?:the |its |their |a )?password", "password", "reset"),
     _signal_type("PASSWORD_RESET")),
    (_rx(r"(?<!/)\bMFA\b|two-factor|\b2FA\b|one-time (?:pass|code)",
         "mfa", "factor", "2fa", "one-time"), _signal_type("MFA_CHALLENGE", "MFA_FAILED")),
    (_rx(r"failed MFA|MFA (?:failure|failed)|MFA_FAILED", "mfa"), _signal_type("MFA_FAILED")),
    (_rx(r"profile[- _]changes?|changed (?:the |their |its )?(?:e-?mail|phone|address)",
         "profile", "changed"), _signal_type("PROFILE_CHANGE")),
    (_rx(r"payees? (?:was |were )?added|PAYEE_ADDED|new (?:payees?|beneficiar(?:y|ies))|"
         r"added (?:a |the )?(?:new )?(?:payee|beneficiary)", "payee", "beneficiar"),
     _signal_type("PAYEE_ADDED")),
    (_rx(r"\bemulat(?:or|ors|ed)\b", "emulat"), _flag("is_emulator")),
    (_rx(r"\bVPNs?\b", "vpn"), _flag("is_vpn")),
    (_rx(r"\bdevices?\b(?![- ]signals?\b)", "device"), _device),
    (_rx(r"\bdevice signals?\b", "signal"), _signal),
    (_rx(r"\balerts?\b", "alert"), _alert),
)  # fmt: skip
# Nouns whose negation claims an absence in the whole case ("no payments were made").
ABSENT_NOUNS: tuple[tuple[Rx, Callable[[str, Record], bool]], ...] = (
    (_rx(r"\b(?:payments?|purchases?|transactions?|charges?|spend(?:ing)?)\b",
         "pay", "purchas", "transact", "charge", "spend"), _txn),
    (_rx(r"\bwithdrawals?\b", "withdrawal"), _channel("ATM")),
    (_rx(r"\bpayees?\b|\bbeneficiar(?:y|ies)\b", "payee", "beneficiar"),
     _signal_type("PAYEE_ADDED")),
)  # fmt: skip
NOVELTY = re.compile(
    r"\b(?:new(?:ly)?(?:[- ](?:seen|registered|added))?|unrecogni[sz]ed|unknown|unfamiliar|"
    r"first[- ]seen|never[- ]seen(?: before)?|previously unseen)\s+(?:\w+\s+)?devices?\b"
    r"|NEW_DEVICE",
    re.IGNORECASE,
)

# What a counted noun counts: (pattern, predicate, distinct key or None).
_NOUNS: tuple[tuple[str, Callable[[str, Record], bool], Callable[[Record], object] | None], ...] = (
    (r"device signals?", _signal, None),
    (r"transactions?|payments?|purchases?|charges?|spends?", _txn, None),
    (r"attempts?", _any(_txn, _signal), None),
    (r"debits?", _direction("DEBIT"), None),
    (r"credits?|deposits?", _direction("CREDIT"), None),
    (r"transfers?|wires?", _channel("TRANSFER"), None),
    (r"withdrawals?", _channel("ATM"), None),
    (r"declines?|declined", _declined, None),
    (r"refunds?|reversals?", _status("REVERSED"), None),
    (r"devices?", _device, lambda r: r.get("device_id")),
    (r"log-?ins?|sign-?ins?", _signal_type("LOGIN", "LOGIN_FAILED"), None),
    (r"(?:password )?resets?", _signal_type("PASSWORD_RESET"), None),
    (r"payees?|beneficiar(?:y|ies)", _signal_type("PAYEE_ADDED"), None),
    (r"payees?|beneficiar(?:y|ies)", _channel("TRANSFER"),
     lambda r: r.get("counterparty_iban") or r.get("counterparty_name")),
    (r"merchants?|shops?|stores?|retailers?", _txn,
     lambda r: r.get("merchant_name") or r.get("merchant_category_code")),
    (r"sources?|senders?|payers?|counterpart(?:y|ies)", _direction("CREDIT"),
     lambda r: r.get("counterparty_iban") or r.get("counterparty_name")),
    (r"countries", _any(_txn, _signal),
     lambda r: r.get("merchant_country") or r.get("geo_country")),
    (r"alerts?", _alert, None),
    (r"signals?", _signal, None),
    (r"events?", _any(_signal, _txn, _alert), None),
    (r"accounts?", lambda k, r: True, lambda r: r.get("account_id")),
)  # fmt: skip
LINKED_ACCOUNTS = re.compile(r"^accounts?(?:\(s\))?$", re.IGNORECASE)
NOUNS = tuple((re.compile(rf"^(?:{p})(?:\(s\))?$", re.IGNORECASE), f, d) for p, f, d in _NOUNS)
_NOUN_ALT = "|".join(p for p, _, _ in _NOUNS)
# Qualifiers the count honours; any other word between number and noun makes the count
# a bound ("3 small debits": at most as many debits as there are).
QUALIFIERS: dict[str, Callable[[str, Record], bool]] = {
    "declined": _declined,
    "failed": _declined,
    "rejected": _declined,
    "approved": _status("APPROVED"),
    "successful": _status("APPROVED"),
    "card-not-present": _channel("CARD_NOT_PRESENT", "WALLET"),
    "cnp": _channel("CARD_NOT_PRESENT", "WALLET"),
    "online": _channel("CARD_NOT_PRESENT", "WALLET"),
    "card-present": _channel("CARD_PRESENT"),
    "outbound": _direction("DEBIT"),
    "outgoing": _direction("DEBIT"),
    "inbound": _direction("CREDIT"),
    "incoming": _direction("CREDIT"),
    "atm": _channel("ATM"),
    "transfer": _channel("TRANSFER"),
    "card": _channel("CARD_NOT_PRESENT", "CARD_PRESENT", "WALLET"),
    "new": _any(_signal_type("NEW_DEVICE", "PAYEE_ADDED"), _device),
}
_STOP = r"(?:by|of|and|or|from|to|in|on|at|with|within|for|than|per|the|a|an)\b"
COUNT = re.compile(
    rf"(?<![\w.,/-])(?P<n>{_NUM})\s+(?P<mods>(?:(?!{_STOP})[^\W\d_][\w/-]*\s+){{0,3}}?)"
    rf"(?P<noun>(?:{_NOUN_ALT})(?:\(s\))?)(?![\w-])",
    re.IGNORECASE,
)

# --- money --------------------------------------------------------------------------------

SYMBOLS = {"€": ("EUR",), "£": ("GBP",), "$": ("USD", "CAD", "AUD", "NZD", "SGD", "HKD"),
           "¥": ("JPY", "CNY")}  # fmt: skip
_AMOUNT_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
AMOUNT = re.compile(
    rf"(?P<sym>[€£$¥])\s?(?P<n1>{_AMOUNT_NUM})(?P<s1>\s?[kKmM]\b)?"
    rf"|\b(?P<c2>[A-Z]{{3}})\s?(?P<n2>{_AMOUNT_NUM})(?P<s2>\s?[kKmM]\b)?"
    rf"|(?<![\w.,])(?P<n3>{_AMOUNT_NUM})(?P<s3>\s?[kKmM])?\s?(?P<c3>[A-Z]{{3}})\b"
)
SCALE = {"k": 1000, "m": 1_000_000}


@cache
def _currencies() -> frozenset[str]:
    return frozenset(list_currencies())


@cache
def _exponent(currency: str) -> int:
    try:
        return int(get_currency_precision(currency))
    except Exception:  # an unknown code: two decimals, as most currencies
        return 2


@dataclass(frozen=True)
class Amount:
    currencies: tuple[str, ...]
    value: Decimal
    tolerance: Decimal  # half a unit of the last digit written


def _amount(m: re.Match[str]) -> Amount | None:
    if m.group("sym"):
        curs, num, suf = SYMBOLS[m.group("sym")], m.group("n1"), m.group("s1")
    elif m.group("c2"):
        curs, num, suf = (m.group("c2"),), m.group("n2"), m.group("s2")
    else:
        curs, num, suf = (m.group("c3"),), m.group("n3"), m.group("s3")
    if not all(c in _currencies() for c in curs):
        return None
    try:
        value = Decimal(num.replace(",", ""))
    except InvalidOperation:
        return None
    decimals = len(num.split(".", 1)[1]) if "." in num else 0
    tolerance = Decimal(5) / Decimal(10) ** (decimals + 1)
    if suf:
        scale = SCALE[suf.strip().lower()]
        value, tolerance = value * scale, tolerance * scale
    return Amount(curs, value, tolerance)


# --- countries, merchants, typologies ------------------------------------------------------

ALIASES = {
    "uk": "GB", "britain": "GB", "great britain": "GB", "england": "GB", "usa": "US",
    "u.s.": "US", "america": "US", "the states": "US", "holland": "NL", "uae": "AE",
    "russian federation": "RU", "czechia": "CZ", "korea": "KR",
}  # fmt: skip
# Two-letter capitals that are words or abbreviations more often than countries.
NOT_CODES = frozenset(
    {"AM", "PM", "ID", "OK", "TV", "IT", "NO", "OR", "IN", "AT", "BE", "TO", "IS", "ME", "MY",
     "SO", "DO", "AN", "AS", "BY", "GO", "HE", "HI", "IF", "OF", "ON", "UP", "WE", "AI", "CV",
     "PS", "SA", "TC", "FM", "MS", "MD", "PR", "VA", "IP", "OS"}
)  # fmt: skip


@cache
def _country_names() -> dict[str, str]:
    """Lowercase English names of countries (babel's CLDR data) and common aliases → code."""
    names = {
        name.lower(): code
        for code, name in Locale("en").territories.items()
        if isinstance(code, str) and len(code) == 2 and code.isalpha()
    }
    names.update(ALIASES)
    return names


NAME_WORD = re.compile(r"[A-Za-z][A-Za-z.']*")
NAME_WORDS_MAX = 4  # "Saint Kitts and Nevis"


def _country_mentions(text: str) -> Iterator[tuple[int, str]]:
    """(start, code) of each country named in `text`, longest name first."""
    names = _country_names()
    words = list(NAME_WORD.finditer(text))
    lowered = [w.group().lower().rstrip(".") for w in words]
    i = 0
    while i < len(words):
        if not words[i].group()[0].isupper():  # names are capitalised: "chad" is no country
            i += 1
            continue
        for n in range(min(NAME_WORDS_MAX, len(words) - i), 0, -1):
            key = " ".join(lowered[i : i + n])
            code = names.get(key) or names.get(key + ".")
            if code:
                yield words[i].start(), code
                i += n
                break
        else:
            i += 1


@cache
def _country_codes() -> frozenset[str]:
    return frozenset(
        c for c in Locale("en").territories if isinstance(c, str) and len(c) == 2 and c.isalpha()
    )


CODE2 = re.compile(r"(?<![\w-])[A-Z]{2}(?![\w-])")
MCC = re.compile(r"\bMCCs?\s*((?:\d{4}(?:\s*(?:,|and|or|/)\s*)?)+)", re.IGNORECASE)
MCC_CODE = re.compile(r"\d{4}")
CATEGORIES: tuple[tuple[Rx, frozenset[str]], ...] = tuple(
    (_rx(p, *hints), frozenset(codes.split()))
    for p, codes, hints in (
        (r"\belectronics?\b", "5732 5722 5734 5045 5065 5946 5999", ("electronic",)),
        (r"\bjewel(?:le)?ry\b|\bjewel(?:l)?ers?\b", "5944 5094", ("jewel",)),
        (r"\bgambling\b|\bcasinos?\b|\bbetting\b", "7995 7800 7801 7802",
         ("gambl", "casino", "betting")),
        (r"\bcrypto(?:currency|currencies)?\b", "6051", ("crypto",)),
        (r"\bremittances?\b|\bmoney[- ](?:transfer|service)s?\b(?! to)", "4829 6051 6540",
         ("remittance", "money")),
        (r"\bgift[- ]cards?\b|\bstored[- ]value\b|\bprepaid cards?\b", "5947 6540 5999",
         ("gift", "stored", "prepaid")),
        (r"\bairlines?\b|\bflights?\b", "4511", ("airline", "flight")),
        (r"\bhotels?\b", "7011", ("hotel",)),
        (r"\bgrocer(?:y|ies)\b|\bsupermarkets?\b", "5411", ("grocer", "supermarket")),
        (r"\bfuel\b|\bpetrol\b|\bgas stations?\b", "5541 5542", ("fuel", "petrol", "gas station")),
    )
)  # fmt: skip
_R = ReasonCode
TYPOLOGIES: tuple[tuple[Rx, frozenset[ReasonCode]], ...] = tuple(
    (_rx(p, *hints), frozenset(codes))
    for p, codes, hints in (
        (r"card[- ]testing|\bcarding\b|\bBIN attacks?\b|card enumeration", {_R.CARD_TESTING},
         ("card", "bin ", "enumeration")),
        (r"account[- ]takeover|\bATO\b|takeover|account compromise|compromised account",
         {_R.ACCOUNT_TAKEOVER}, ("takeover", "ato", "compromis")),
        (r"\bmul(?:e|es|ing)\b|money[- ]laundering|\blayering\b|pass-through",
         {_R.MULE_ACTIVITY}, ("mul", "launder", "layering", "pass-through")),
        (r"impossible travel", {_R.IMPOSSIBLE_TRAVEL}, ("impossible",)),
        (r"\bvelocity\b", {_R.VELOCITY_SPIKE, _R.CARD_TESTING}, ("velocity",)),
        (r"geo(?:graphic(?:al)?)?[- ]?mismatch|unusual location",
         {_R.GEO_MISMATCH, _R.IMPOSSIBLE_TRAVEL}, ("mismatch", "unusual location")),
        (r"\bAPP (?:scam|fraud)\b|authori[sz]ed push[- ]payment|impersonation scam|\bscams?\b",
         {_R.NEW_PAYEE, _R.ACCOUNT_TAKEOVER, _R.MULE_ACTIVITY}, ("app ", "push", "scam")),
        (r"bust[- ]out", {_R.HIGH_AMOUNT, _R.VELOCITY_SPIKE, _R.MERCHANT_RISK}, ("bust",)),
        # Typologies no event here can show: cut wherever they are claimed.
        (r"phishing|smishing|vishing|romance|investment fraud|pig[- ]butchering|"
         r"synthetic identit|identity theft|social engineering|sextortion|elder (?:abuse|fraud)|"
         r"friendly fraud|first[- ]party fraud|chargeback fraud|insider", set(),
         ("phish", "smish", "vish", "romance", "investment", "pig", "synthetic", "identity",
          "social", "sextortion", "elder", "friendly", "first", "chargeback", "insider")),
    )
)  # fmt: skip

# --- spans and times -----------------------------------------------------------------------

_UNIT = r"(?P<u>seconds?|secs?|minutes?|mins?|min|hours?|hrs?|h|days?|d|weeks?)"
UNITS = {"s": 1000, "m": MINUTE, "h": HOUR, "d": DAY, "w": 7 * DAY}
SPAN = re.compile(
    rf"\b(?:within|in|over|across|under|inside|less than|in under|in less than)\s+"
    rf"(?:about |around |roughly |~|just |only )?(?P<n>\d+(?:\.\d+)?|{_NUM}|an?)\s*{_UNIT}\b",
    re.IGNORECASE,
)
APART = re.compile(
    rf"(?<![\w.])(?P<n>\d+(?:\.\d+)?|{_NUM}|an?)\s*{_UNIT}\s+(?:before|earlier|after|later|prior|"
    rf"apart|ago)\b",
    re.IGNORECASE,
)
DATE = re.compile(r"\b(?P<d>\d{4}-\d{2}-\d{2})(?:[T ](?P<t>\d{2}:\d{2})(?::\d{2}(?:\.\d+)?)?Z?)?\b")


def _unit_ms(unit: str) -> int:
    u = unit.lower()
    key = "m" if u.startswith("min") else u[0]
    return UNITS[key]


def _span_value(n: str) -> float:
    n = n.lower()
    if n in ("a", "an"):
        return 1.0
    return float(n) if n[0].isdigit() else float(NUMBER_WORDS[n])


# --- level, score and confidence arguments -------------------------------------------------

LEVEL_WORDS = {
    "low": RiskLevel.LOW, "minimal": RiskLevel.LOW, "negligible": RiskLevel.LOW,
    "limited": RiskLevel.LOW, "medium": RiskLevel.MEDIUM, "moderate": RiskLevel.MEDIUM,
    "elevated": RiskLevel.MEDIUM, "high": RiskLevel.HIGH, "critical": RiskLevel.CRITICAL,
    "severe": RiskLevel.CRITICAL, "extreme": RiskLevel.CRITICAL,
}  # fmt: skip
_LVL = "|".join(LEVEL_WORDS)
# In prose, "a high-risk fraud" of a CRITICAL case argues nothing away (the local model
# wrote it so); "risk is high", the level's own name ("HIGH risk") and a sentence that
# argues for less (DOWNGRADE) must match the published level.
ALSO_IN_PROSE = {RiskLevel.HIGH: (RiskLevel.CRITICAL,)}
# Words that turn "high" of a CRITICAL case into an argument for less.
DOWNGRADE = re.compile(
    r"\b(?:only|merely|just|at most|rather than|instead of|downgrad\w*|lower(?:ed)?|"
    r"reduc\w*|not (?:a |an |the )?critical|no more than)\b",
    re.IGNORECASE,
)
NEGATED_IN = re.compile(r"\b(?:not|no|never|hardly|barely)\b", re.IGNORECASE)
NOT_CASE_RISK = (
    r"(?![- ](?:merchants?|mccs?|categor|countr|devices?|payees?|jurisdiction|"
    r"transactions?|payments?|corridor|score|segment|customers?|ips?|locations?))"
)
LEVEL = re.compile(
    rf"\b(?P<w1>{_LVL})[- ]risk\b{NOT_CASE_RISK}"
    rf"|\brisk (?:is |level (?:is |of )?|appears |seems |remains |looks |rated |as )"
    rf"(?:\w+ )?(?P<w2>{_LVL})\b"
    rf"|\b(?P<w3>LOW|MEDIUM|HIGH|CRITICAL) (?:risk|level|priority|severity case)\b",
    re.IGNORECASE,
)
SCORE = re.compile(
    r"(?<![\w.])(?P<s1>\d{1,3})\s*/\s*100\b"
    r"|(?<!vendor )(?<!device )\b(?:risk )?score (?:of |is |at |=\s*)?(?P<s2>\d{1,3})\b(?![.,]\d)",
    re.IGNORECASE,
)
CONFIDENCE = re.compile(
    r"\b(?P<w1>low|medium|moderate|high)[- ]confidence\b"
    r"|\bconfidence (?:is |level (?:is )?)?(?P<w2>low|medium|moderate|high)\b",
    re.IGNORECASE,
)
CONFIDENCE_WORDS = {"low": Confidence.LOW, "medium": Confidence.MEDIUM,
                    "moderate": Confidence.MEDIUM, "high": Confidence.HIGH}  # fmt: skip
DISMISSAL = re.compile(
    r"false[- ]positive|likely (?:legitimate|genuine|benign)|legitimate (?:activity|use|customer)"
    r"|genuine (?:customer|activity)|\bbenign\b|no (?:further )?action (?:is )?(?:needed|required|"
    r"necessary)|nothing suspicious|not suspicious|no (?:sign|evidence|indication)s? of fraud"
    r"|can (?:safely )?be closed|(?:safe|fine) to close|close (?:the|this) case"
    r"|no cause for concern|not a concern|poses? (?:little|no) risk",
    re.IGNORECASE,
)
GATED = {
    "novelty": Rx(NOVELTY, ("device",)),
    "mcc": Rx(MCC, ("mcc",)),
    "span": Rx(SPAN, ("within", "in", "over", "across", "under", "inside", "less")),
    "apart": Rx(APART, ("before", "earlier", "after", "later", "prior", "apart", "ago")),
    "level": Rx(LEVEL, ("risk", "level", "priority", "severity")),
    "score": Rx(SCORE, ("/100", "score")),
    "confidence": Rx(CONFIDENCE, ("confiden",)),
    "dismissal": Rx(DISMISSAL, ("false", "legitim", "genuine", "benign", "action", "suspicious",
                                "fraud", "close", "concern", "risk")),
}  # fmt: skip
SENTENCE = re.compile(r"(?<=[.!?;])\s+(?=\S)")
WORD = re.compile(r"[^\W_]+(?:'t)?", re.UNICODE)


def sentences(text: str) -> list[str]:
    return [s for s in SENTENCE.split(text.strip()) if s.strip()]


# --- the checker ---------------------------------------------------------------------------


@dataclass
class Scope:
    """Events a text is checked against, with what the checks need precomputed lazily."""

    events: Sequence[Event]
    _sums: dict[tuple[str, str, str], list[int]] = field(default_factory=dict, repr=False)

    def matching(self, pred: Callable[[str, Record], bool]) -> list[Record]:
        return [r for k, r in self.events if pred(k, r)]

    def times(self, pred: Callable[[str, Record], bool] | None = None) -> list[int]:
        return sorted(r["occurred_at"] for k, r in self.events if pred is None or pred(k, r))

    def prefix_sums(self, currency: str, direction: str, channel: str) -> list[int]:
        """Prefix sums of amounts (minor units) of transactions in time order, by
        currency and direction ("" for any channel)."""
        key = (currency, direction, channel)
        if key not in self._sums:
            txns = sorted(
                (r for k, r in self.events if k == "transaction"),
                key=lambda r: (r["occurred_at"], r["event_id"]),
            )
            sums, total = [0], 0
            for r in txns:
                if r.get("currency") != currency or r.get("direction") != direction:
                    continue
                if channel and r.get("channel") != channel:
                    continue
                total += int(r["amount_minor"])
                sums.append(total)
            self._sums[key] = sums
        return self._sums[key]


@dataclass(frozen=True)
class Published:
    """What the brief publishes, against which prose may not argue."""

    level: RiskLevel
    score: int
    confidence: Confidence
    reasons: frozenset[ReasonCode]


@dataclass
class Checked:
    """A text after the checker: the sentences kept, the claims cut by kind, how many
    claims it read (a mention of the alert alone is none: "consistent with the alert"
    states nothing), and the arguments against the published brief it makes."""

    text: str
    cut: Counter[str]
    claims: int
    kept_chars: int
    total_chars: int
    argued: list[str]


@dataclass(frozen=True)
class Context:
    """The case as the checker sees it: all its events, its window, and the event sets
    of the brief's facts (a count or sum in the summary may be one fact's)."""

    case: Scope
    window: tuple[int, int]
    groups: tuple[Scope, ...] = ()
    linked: int = 0  # other accounts the entity index linked to the case (network/links.py)


def linked_count(case: Any) -> int:
    """Distinct other accounts in the case's entity index answers."""
    return len({x.account_id for a in getattr(case, "links", ()) for x in a.links})


def check_text(text: str, scope: Scope, ctx: Context, published: Published, *,
               summary: bool) -> Checked:  # fmt: skip
    """Each sentence of `text` read as claims against `scope` (for the summary, the case
    and the facts' event sets); a sentence with a false claim is cut."""
    kept, cut, claims, argued = [], Counter[str](), 0, []
    parts = sentences(text)
    groups = (scope, *ctx.groups, *alert_scopes(ctx.case)) if summary else (scope,)
    for sentence in parts:
        found = _claims(sentence, groups, ctx, published)
        claims += len(found.verdicts) - found.mentions
        argued += found.argued
        false = [kind for kind, ok in found.verdicts if not ok]
        if false:
            cut[false[0]] += 1  # the sentence goes for its first false claim
        else:
            kept.append(sentence)
    kept_text = " ".join(kept)
    return Checked(kept_text, cut, claims, len(kept_text), len(" ".join(parts)), argued)


def alert_scopes(case: Scope) -> tuple[Scope, ...]:
    """Each alert with the transactions it names: "an alert on 8 transactions" counts
    the alert's own, not the case's."""
    out = []
    for k, alert in case.events:
        if k != "alert":
            continue
        named = set(alert.get("transaction_ids") or ())
        txns = [(k2, r) for k2, r in case.events if k2 == "transaction"
                and r.get("transaction_id") in named]  # fmt: skip
        out.append(Scope([(k, alert), *txns]))
    return tuple(out)


@dataclass
class _Found:
    verdicts: list[tuple[str, bool]] = field(default_factory=list)
    argued: list[str] = field(default_factory=list)
    mentions: int = 0  # "the alert": checked, but no content of its own


NOT_A_NEGATION = re.compile(r"not[- _]present", re.IGNORECASE)  # card-not-present


def _negated(sentence: str, start: int) -> bool:
    window = NOT_A_NEGATION.sub("", sentence[max(0, start - 40) : start])
    before = [w.lower() for w in WORD.findall(window)][-3:]
    return any(w in NEGATIONS or w.endswith("n't") for w in before)


# Identifiers (account, device, rule, alert ids): words joined by hyphens or underscores
# with a digit among them. Their words are not prose: "acct-benign-001" is no dismissal,
# "R-ATO-2" no typology.
IDENTIFIER = re.compile(r"(?<![\w-])(?=[\w-]*\d)(?=[\w-]*[-_])[\w-]{4,}(?![\w-])")


def _claims(sentence: str, groups: tuple[Scope, ...], ctx: Context, pub: Published) -> _Found:
    found = _Found()
    add = found.verdicts.append
    sentence = IDENTIFIER.sub(lambda m: "#" * len(m.group()), sentence)
    low = sentence.lower()
    masked = sentence
    scope = groups[0]

    def blank(m: re.Match[str]) -> None:
        nonlocal masked
        masked = masked[: m.start()] + " " * (m.end() - m.start()) + masked[m.end() :]

    # Arguments against the published brief first (they are not cut, they overrule).
    for m in GATED["level"].finditer(sentence, low):
        raw = m.group("w1") or m.group("w2") or m.group("w3")
        level = LEVEL_WORDS[raw.lower()]
        denied = _negated(sentence, m.start()) or bool(NEGATED_IN.search(m.group()))
        prose = (
            m.group("w1") is not None  # "a high-risk fraud", "high risk"
            and not raw.isupper()
            and pub.level in ALSO_IN_PROSE.get(level, ())
            and not DOWNGRADE.search(sentence)
        )
        if denied:  # "risk is not critical" (or "not high") of a CRITICAL case
            if level is pub.level or pub.level in ALSO_IN_PROSE.get(level, ()):
                found.argued.append("level")
        elif level is not pub.level and not prose:
            found.argued.append("level")
        blank(m)
    for m in GATED["score"].finditer(masked, low):
        value = int(m.group("s1") or m.group("s2"))
        if value != pub.score:
            found.argued.append("score")
        blank(m)
    for m in GATED["confidence"].finditer(sentence, low):
        word = (m.group("w1") or m.group("w2")).lower()
        if not _negated(sentence, m.start()) and CONFIDENCE_WORDS[word] is not pub.confidence:
            found.argued.append("confidence")
    for m in GATED["dismissal"].finditer(sentence, low):
        if not _negated(sentence, m.start()) and pub.level.rank >= RiskLevel.MEDIUM.rank:
            found.argued.append("dismissal")
    # Dates and times, then amounts: their digits are not counts.
    if "-" in sentence:
        for m in DATE.finditer(masked):
            add(("span", _date_ok(m, ctx)))
            blank(m)
    for m in AMOUNT.finditer(masked):
        amount = _amount(m)
        if amount is None:
            continue
        add(("amount", any(_amount_ok(amount, g) for g in groups)))
        blank(m)
    for m in GATED["mcc"].finditer(masked, low):
        codes = set(MCC_CODE.findall(m.group(1)))
        seen_mccs = {r.get("merchant_category_code") for r in scope.matching(_txn)}
        add(("merchant", codes <= seen_mccs))
        blank(m)
    counted: list[tuple[int, Callable[[str, Record], bool]]] = []
    none_of: list[range] = []  # "0 device signal(s)": a claim of absence, like "no"
    for m in COUNT.finditer(masked):
        verdict = _count_ok(m, groups, ctx.case, ctx.linked)
        if verdict is None:
            continue
        ok, n, pred = verdict
        add(("count", ok))
        counted.append((n, pred))
        if n == 0:
            none_of.append(range(m.start("noun"), m.end("noun")))
    for m in GATED["span"].finditer(masked, low):
        add(("span", _span_ok(m, groups, counted)))
        blank(m)
    for m in GATED["apart"].finditer(masked, low):
        add(("span", _apart_ok(m, groups)))
        blank(m)
    for pattern, pred in KIND_PHRASES:
        for m in pattern.finditer(masked, low):
            if pred is _alert:
                found.mentions += 1
            if _negated(masked, m.start()) or any(m.start() in r for r in none_of):
                add(("kind", not ctx.case.matching(pred)))
            else:
                add(("kind", bool(scope.matching(pred))))
    for pattern, pred in ABSENT_NOUNS:
        for m in pattern.finditer(masked, low):
            if _negated(masked, m.start()) or any(m.start() in r for r in none_of):
                add(("kind", not ctx.case.matching(pred)))
    for m in GATED["novelty"].finditer(masked, low):
        if not _negated(masked, m.start()):
            add(("novelty", _new_device(scope, ctx)))
    seen = _countries(scope)
    for start, code in _country_mentions(masked):
        if not _negated(masked, start):
            add(("country", code in seen))
    for m in CODE2.finditer(masked):
        code = m.group()
        if code in _country_codes() and code not in NOT_CODES:
            add(("country", code in seen))
    for category, mccs in CATEGORIES:
        for m in category.finditer(masked, low):
            if not _negated(masked, m.start()):
                have = {r.get("merchant_category_code") for r in scope.matching(_txn)}
                add(("merchant", bool(have & mccs)))
    for typology, shown_by in TYPOLOGIES:
        for m in typology.finditer(masked, low):
            if not _negated(masked, m.start()):
                add(("typology", bool(shown_by & pub.reasons)))
    return found


def _date_ok(m: re.Match[str], ctx: Context) -> bool:
    try:
        day = datetime.strptime(m.group("d"), "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        return False
    times = [*ctx.case.times(), *ctx.window]
    if m.group("t"):
        hh, mm = (int(x) for x in m.group("t").split(":"))
        at = int(day.timestamp() * 1000) + hh * HOUR + mm * MINUTE
        return any(at <= t < at + MINUTE for t in times)
    start = int(day.timestamp() * 1000)
    return any(start <= t < start + DAY for t in times)


def _amount_ok(amount: Amount, scope: Scope) -> bool:
    for currency in amount.currencies:
        exp = _exponent(currency)
        target = amount.value * Decimal(10) ** exp
        tol = amount.tolerance * Decimal(10) ** exp
        lo, hi = target - tol, target + tol
        for direction in ("DEBIT", "CREDIT"):
            for channel in ("", "TRANSFER", "CARD_NOT_PRESENT", "CARD_PRESENT", "ATM", "WALLET"):
                sums = scope.prefix_sums(currency, direction, channel)
                if len(sums) > 1 and _run_sum_in(sums, lo, hi):
                    return True
    return False


def _run_sum_in(sums: list[int], lo: Decimal, hi: Decimal) -> bool:
    """Is there a run i < j with sums[j] - sums[i] in [lo, hi]? (sums ascend.)"""
    for j in range(1, len(sums)):
        # sums[i] in [sums[j] - hi, sums[j] - lo], i < j
        low, high = sums[j] - hi, sums[j] - lo
        i = bisect.bisect_left(sums, low, 0, j)
        if i < j and sums[i] <= high:
            return True
    return False


def _count_ok(
    m: re.Match[str], groups: tuple[Scope, ...], case: Scope, linked: int = 0
) -> tuple[bool, int, Callable[[str, Record], bool]] | None:
    """A count is true when some scope (the text's, a fact's, the case's) holds exactly
    that many of what it counts; with a qualifier the checker cannot read, at most.
    "N other (or linked) accounts" counts the accounts the entity index linked: at most
    as many as it did."""
    n = _number(m.group("n"))
    noun = m.group("noun")
    entries = [(p, d) for rx, p, d in NOUNS if rx.match(noun)]
    if not entries:
        return None
    mods = [w.lower() for w in m.group("mods").split()]
    if LINKED_ACCOUNTS.match(noun) and set(mods) & {"other", "linked"}:
        return 1 <= n <= linked or n == 0, n, lambda k, r: False
    known = [QUALIFIERS[w] for w in mods if w in QUALIFIERS]
    exact = len(known) == len(mods)
    first: Callable[[str, Record], bool] | None = None
    for pred, distinct in entries:
        preds = [pred, *known]

        def full(k: str, r: Record, preds: list[Callable[[str, Record], bool]] = preds) -> bool:
            return all(p(k, r) for p in preds)

        first = first or full
        # None of them: a claim about the whole case, not about one fact's events.
        for g in (case,) if n == 0 else (*groups, case):
            records = g.matching(full)
            have = len({distinct(r) for r in records} - {None}) if distinct else len(records)
            if (n == have) if exact else (1 <= n <= max(have, len(records))):
                return True, n, full
    assert first is not None
    return False, n, first


def _span_ok(
    m: re.Match[str],
    groups: tuple[Scope, ...],
    counted: list[tuple[int, Callable[[str, Record], bool]]],
) -> bool:
    unit = _unit_ms(m.group("u"))
    limit = _span_value(m.group("n")) * unit + unit  # the figure as rounded, and one unit
    for g in groups:
        if counted:
            if all(_fits(g.times(pred), n, limit) for n, pred in counted):
                return True
            continue
        times = g.times(lambda k, r: k != "alert") or g.times()
        if len(times) < 2 or times[-1] - times[0] <= limit:
            return True
    return False


def _fits(times: list[int], n: int, limit: float) -> bool:
    """Do `n` of these times fit within `limit`?"""
    if n <= 1:
        return bool(times) or n == 0
    return any(times[i + n - 1] - times[i] <= limit for i in range(len(times) - n + 1))


def _apart_ok(m: re.Match[str], groups: tuple[Scope, ...]) -> bool:
    unit = _unit_ms(m.group("u"))
    value = _span_value(m.group("n")) * unit
    lo, hi = value - unit, value + unit
    for g in groups:
        times = g.times()
        for i, a in enumerate(times):
            j = bisect.bisect_left(times, a + lo, i + 1)
            if j < len(times) and times[j] - a <= hi:
                return True
    return False


def _countries(scope: Scope) -> set[str]:
    out: set[str] = set()
    for _, r in scope.events:
        for f in ("merchant_country", "geo_country"):
            if r.get(f):
                out.add(str(r[f]).upper())
    return out


def _new_device(scope: Scope, ctx: Context) -> bool:
    """A device in scope that the case shows as new: a NEW_DEVICE signal for it, or one
    that the case's first NEW_DEVICE_UNSEEN did not see while another device was in
    use, first seen less than NEW_DEVICE_WITHIN before its use in scope."""
    first: dict[str, int] = {}
    announced = set()
    for k, r in ctx.case.events:
        d = r.get("device_id")
        if not d or k == "alert":
            continue
        first[d] = min(first.get(d, r["occurred_at"]), r["occurred_at"])
        if k == "signal" and r.get("signal_type") == "NEW_DEVICE":
            announced.add(d)
    for k, r in scope.events:
        d = r.get("device_id")
        if not d or k == "alert":
            continue
        if d in announced:
            return True
        # Unseen: the window shows the account on another device well before this one.
        # A young account's first device is its only one, not a new one.
        unseen = first[d] - ctx.window[0] >= NEW_DEVICE_UNSEEN and any(
            t <= first[d] - NEW_DEVICE_WITHIN for o, t in first.items() if o != d
        )
        if unseen and r["occurred_at"] - first[d] < NEW_DEVICE_WITHIN:
            return True
    return False


def scope_of(events: Iterable[Event]) -> Scope:
    return Scope(list(events))
