"""Linked accounts: the messages of the entity index, and what a case makes of its links.

The round trip, as in Kafka Streams' foreign-key join (KIP-213), through two internal
topics whose partition counts are the inputs':
- `streamproc-entity-index`, partitioned by the entity's keyed hash (`partition_of`):
  sightings (an account was seen with the entity, sent by the account's owner with the
  sub-batch that read the event), asks (a case wants the entity's other accounts) and
  decisions (an analyst's CONFIRMED_FRAUD or FALSE_POSITIVE on an account, sent to each
  of the entities its case carried). One topic, so that a sighting and a later ask of
  the same entity are read in the order they were sent.
- `streamproc-entity-links`, on the asking case's partition: the answers, one per ask,
  joined to the case's state by the worker that owns the account.

Every value is JSON of keyed hashes, account and case ids, kinds and times: never a raw
device id, IBAN, card number, IP address, email or phone (a test searches the bytes).

`assess` turns a case's answers into the brief's linked accounts and findings. A link
is risk only when it is not a household's: an account whose alerts carry the case's
surname shares its devices, network and payees as families do.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streamproc.contracts.records import iso
from streamproc.network.entities import EntityHasher, EntityKind, linkable
from streamproc.network.index import DAY_MS, EntityEntry, Link

if TYPE_CHECKING:
    from streamproc.domain.case import Case

SIGHTING, ASK, DECISION = "s", "q", "d"
HOUR_MS = 3_600_000
RING_WINDOW_MS = 72 * HOUR_MS  # "used by N other accounts in the last 72 h"
RING_ACCOUNTS = 4  # other (non-household) accounts on one device, card, IP, email or phone
MULE_WINDOW_MS = 24 * HOUR_MS  # senders who first paid one beneficiary within this
MULE_SENDERS = 3
LINKED_MAX = 20  # linked accounts listed in a brief (most recent first)
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def partition_of(entity_key: str, partitions: int) -> int:
    """The index partition of an entity: its keyed hash is already uniform."""
    return int(entity_key[:8], 16) % partitions


def family_of(hasher: EntityHasher, customer_name: str | None) -> str | None:
    """The keyed hash of a customer name's surname (its last word), or None."""
    if not customer_name:
        return None
    words = _WORD.findall(customer_name.casefold())
    if not words:
        return None
    return hasher.keyed("family", words[-1])


def encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), sort_keys=True).encode()


def decode(value: bytes) -> dict[str, Any]:
    message = json.loads(value)
    if not isinstance(message, dict) or message.get("t") not in (SIGHTING, ASK, DECISION):
        raise ValueError("not an entity index message")
    return message


def sighting(
    kind: EntityKind,
    key: str,
    account_id: str,
    at_ms: int,
    family: str | None,
    family_at: int | None,
) -> dict[str, Any]:
    return {"t": SIGHTING, "e": key, "k": kind.value, "a": account_id, "at": at_ms,
            "f": family, "fa": family_at}  # fmt: skip


def decode_answer(value: bytes) -> dict[str, Any]:
    answer = json.loads(value)
    if not isinstance(answer, dict) or not {"q", "c", "links"} <= set(answer):
        raise ValueError("not an entity index answer")
    return answer


def ask_id(case_id: str, entity_key: str, as_of_ms: int) -> str:
    """The same case, entity and as-of time: the same ask, however often it is sent."""
    blob = f"{case_id}\x00{entity_key}\x00{as_of_ms}".encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def ask(
    kind: str,
    key: str,
    account_id: str,
    case_id: str,
    as_of_ms: int,
    partition: int,
    family: str | None,
    family_at: int | None = None,
) -> dict[str, Any]:
    return {
        "t": ASK,
        "e": key,
        "k": kind,
        "a": account_id,
        "c": case_id,
        "at": as_of_ms,
        "q": ask_id(case_id, key, as_of_ms),
        "p": partition,
        "f": family,
        "fa": family_at,
    }


def decision(
    kind: str, key: str, account_id: str, case_id: str, disposition: str, at_ms: int
) -> dict[str, Any]:
    return {
        "t": DECISION,
        "e": key,
        "k": kind,
        "a": account_id,
        "c": case_id,
        "d": disposition,
        "at": at_ms,
    }


def apply(entry: EntityEntry | None, message: Mapping[str, Any], lookback_ms: int) -> EntityEntry:
    """The entity's entry after one index message (an ask is also a sighting)."""
    entry = entry or EntityEntry(str(message["k"]))
    at = int(message["at"])
    if message["t"] == DECISION:
        entry.decide(str(message["a"]), str(message["d"]), at, message.get("c"))
    else:
        case = message.get("c") if message["t"] == ASK else None
        entry.see(str(message["a"]), at, message.get("f"), case, message.get("fa"))
    entry.expire(max([at, *(s.last_ms for s in entry.accounts.values())]), lookback_ms)
    return entry


def answer(
    entry: EntityEntry | None, ask_msg: Mapping[str, Any], lookback_ms: int
) -> dict[str, Any]:
    """The answer to an ask: the entity's other accounts as of the ask's time."""
    at, account = int(ask_msg["at"]), str(ask_msg["a"])
    links = [] if entry is None else entry.links(account, at, lookback_ms)
    return {
        "q": ask_msg["q"],
        "c": ask_msg["c"],
        "e": ask_msg["e"],
        "k": ask_msg["k"],
        "links": [link.to_json() for link in links],
        "o": entry.overflow if entry is not None else 0,
    }


def case_entities(
    key_of: Callable[[EntityKind, str], str | None], case: Case
) -> dict[str, tuple[EntityKind, tuple[str, ...]]]:
    """The case's entities: key → (kind, the case's events carrying it)."""
    found: dict[str, tuple[EntityKind, list[str]]] = {}
    for kind, records in (
        ("transaction", case.transactions),
        ("signal", case.signals),
        ("alert", case.alerts),
    ):
        for record in records:
            for entity_kind, value in linkable(kind, record):
                key = key_of(entity_kind, value)
                if key is not None:
                    found.setdefault(key, (entity_kind, []))[1].append(record["event_id"])
    return {k: (kind, tuple(dict.fromkeys(ids))) for k, (kind, ids) in found.items()}


# -- what a case makes of its answers ----------------------------------------------------


@dataclass(frozen=True)
class Answered:
    """One entity of the case and the index's answer about it."""

    kind: EntityKind
    key: str
    evidence: tuple[str, ...]  # the case's events carrying the entity
    links: tuple[Link, ...]
    overflow: int = 0

    @classmethod
    def of(
        cls, kind: EntityKind, key: str, evidence: tuple[str, ...], answer: Mapping[str, Any]
    ) -> Answered:
        """From an answer as `answer` sends it (or a case's state keeps it)."""
        links = tuple(Link.from_json(x) for x in answer["links"])
        return cls(kind, key, evidence, links, int(answer.get("o", 0)))


@dataclass(frozen=True)
class LinkView:
    """A linked account as the brief lists it (one per account and entity kind)."""

    account_id: str
    entity_kind: EntityKind
    case_ids: tuple[str, ...]
    disposition: str | None
    disposition_at: int | None
    household: bool
    evidence: tuple[str, ...]


@dataclass(frozen=True)
class LinkFinding:
    confirmed: bool  # LINKED_TO_CONFIRMED_FRAUD; else LINKED_ACCOUNTS (a ring)
    text: str
    evidence: tuple[str, ...]


@dataclass(frozen=True)
class Assessed:
    accounts: tuple[LinkView, ...]
    findings: tuple[LinkFinding, ...]
    context: tuple[tuple[str, tuple[str, ...]], ...]  # facts that raise nothing


NOUN = {
    EntityKind.DEVICE: "device",
    EntityKind.IBAN: "beneficiary IBAN",
    EntityKind.CARD: "card",
    EntityKind.IP: "IP address",
    EntityKind.EMAIL: "email address",
    EntityKind.PHONE: "phone number",
}


def _open_cases(link: Link, as_of_ms: int) -> tuple[str, ...]:
    """The linked account's cases that asked in the RING_WINDOW before the case's alert,
    unless an analyst cleared the account (a case of a month ago is no open case)."""
    if link.decision and link.decision.decision == "FALSE_POSITIVE":
        return ()
    return tuple(c for c, at in link.cases if at >= as_of_ms - RING_WINDOW_MS)


def assess(answers: Iterable[Answered], family: str | None, as_of_ms: int) -> Assessed:
    """The brief's linked accounts, the findings that raise its floor, and the context
    facts, from the answers about the case's entities."""
    views: dict[tuple[str, EntityKind], LinkView] = {}
    findings: list[LinkFinding] = []
    context: list[tuple[str, tuple[str, ...]]] = []
    for a in sorted(answers, key=lambda x: (x.kind.value, x.key)):
        if not a.links:
            continue
        noun = NOUN[a.kind]
        home = [x for x in a.links if family is not None and x.family == family]
        others = [x for x in a.links if x not in home]
        for x in a.links:
            d = x.decision
            views.setdefault(
                (x.account_id, a.kind),
                LinkView(
                    x.account_id,
                    a.kind,
                    _open_cases(x, as_of_ms),
                    d.decision if d else None,
                    d.at_ms if d else None,
                    x in home,
                    a.evidence,
                ),
            )
        confirmed = [x for x in others if x.decision and x.decision.decision == "CONFIRMED_FRAUD"]
        recent = [x for x in others if x.last_ms >= as_of_ms - RING_WINDOW_MS]
        with_cases = [x for x in others if _open_cases(x, as_of_ms) and x not in confirmed]
        if confirmed:
            last = max(x.decision.at_ms for x in confirmed if x.decision)
            findings.append(
                LinkFinding(
                    True,
                    f"the {noun} of this case was also used by {len(confirmed)} other "
                    f"account(s) an analyst confirmed as fraud (latest decision "
                    f"{iso(last)[:10]})",
                    a.evidence,
                )
            )
        if a.kind is EntityKind.IBAN:
            new = [x for x in others if x.first_ms >= as_of_ms - MULE_WINDOW_MS]
            if len(new) >= MULE_SENDERS or with_cases:
                findings.append(
                    LinkFinding(
                        False,
                        f"the {noun} this case paid received money from {len(new)} other "
                        f"account(s) first paying it in the last 24 h" + _cases_clause(with_cases),
                        a.evidence,
                    )
                )
                continue
        elif len(recent) >= RING_ACCOUNTS or with_cases:
            findings.append(
                LinkFinding(
                    False,
                    f"the {noun} of this case was used by {len(recent)} other account(s) in "
                    f"the last 72 h"
                    + _cases_clause(with_cases)
                    + (f" (and {a.overflow} more seen before)" if a.overflow else ""),
                    a.evidence,
                )
            )
            continue
        if not confirmed:
            parts = []
            if others:
                parts.append(f"{len(others)} other account(s)")
            if home:
                parts.append(f"{len(home)} other account(s) of the same family name")
            context.append(
                (
                    f"the {noun} of this case is shared with {' and '.join(parts)}; no open "
                    "case or confirmed fraud on them",
                    a.evidence,
                )
            )
    # The accounts behind a floor first (confirmed fraud, open cases), households last.
    ordered = sorted(
        views.values(),
        key=lambda v: (
            v.household,
            v.disposition != "CONFIRMED_FRAUD",
            not v.case_ids,
            v.account_id,
            v.entity_kind,
        ),
    )
    return Assessed(tuple(ordered[:LINKED_MAX]), tuple(findings), tuple(context))


def _cases_clause(with_cases: list[Link]) -> str:
    if not with_cases:
        return ""
    return f"; {len(with_cases)} of them with an open case"


def decision_age_days(at_ms: int, now_ms: int) -> int:
    return max(0, (now_ms - at_ms) // DAY_MS)


def canonical(answers: Iterable[Answered]) -> list[Any]:
    """The answers as the case's content hash takes them (entities without links left
    out, so a case that links nothing keeps the id it had before links existed)."""
    return sorted(
        [
            a.kind.value,
            a.key,
            sorted(json.dumps(x.to_json(), sort_keys=True) for x in a.links),
        ]
        for a in answers
        if a.links
    )
