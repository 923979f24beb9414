"""One entity's entry in the entity index: the accounts seen with it, and analysts'
decisions on them.

The index is a table keyed by the entity's keyed hash (`entities.EntityHasher`), so all
that is known of one entity lives on one partition, whichever accounts carry it. Each
entry is bounded:
- in accounts: the MAX_ACCOUNTS most recently seen (a device farm of thousands is
  reported as the most recent ones, with `overflow` saying more were seen);
- in time: an account last seen with the entity before the lookback is forgotten;
- a decision (CONFIRMED_FRAUD or FALSE_POSITIVE) on an account is kept DECISION_RETAIN_D
  days from the decision, whether or not the account is still seen with the entity,
  because a ring's next victim often comes weeks later; at most MAX_ACCOUNTS of them,
  false positives dropped before confirmed fraud.
So its serialised size has a ceiling far below the changelog's record limit
(`max_bytes`, checked by a test).

A FALSE_POSITIVE decision is that account's only: it never clears another account's
CONFIRMED_FRAUD, nor the entity.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

MAX_ACCOUNTS = 64
MAX_CASES = 4  # case ids kept per account and entity
CASE_ID_MAX = 128  # the contract's bound on ids (contracts/records.py)
FAMILY_MAX = 32
DECISION_RETAIN_D = 90
DAY_MS = 86_400_000
ACCOUNT_ID_MAX = 128  # characters of an account id kept (the contract's bound on ids)
# A decision marks an entity only if the decided account was first seen with it this
# recently before the decision: what was new around the fraud (a crew's device, a mule's
# IBAN), not the victim's landlord or home device of months.
DECISION_NEW_D = 14
DECISIONS = ("CONFIRMED_FRAUD", "FALSE_POSITIVE")


@dataclass
class Seen:
    """When an account was first and last seen with the entity. No count of sightings:
    a replay after a crash sends sightings again, and seeing one twice must change
    nothing. `cases`: the account's cases that asked about the entity (the latest
    MAX_CASES); `family`: the keyed hash of the surname on the account's alerts."""

    first_ms: int
    last_ms: int
    cases: list[list[Any]] = field(default_factory=list)  # [case_id, the ask's as-of ms]
    family: str | None = None
    family_at: int | None = None  # the event time of the alert that first showed it


@dataclass(frozen=True)
class Decision:
    decision: str
    at_ms: int


@dataclass(frozen=True)
class Link:
    """Another account seen with the entity, as a case reads it."""

    account_id: str
    first_ms: int
    last_ms: int
    decision: Decision | None
    cases: tuple[tuple[str, int], ...] = ()  # (case_id, as of when it asked)
    family: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = self.decision
        return {
            "a": self.account_id,
            "f1": self.first_ms,
            "l": self.last_ms,
            "d": [d.decision, d.at_ms] if d else None,
            "c": [list(c) for c in self.cases],
            "fam": self.family,
        }

    @classmethod
    def from_json(cls, v: dict[str, Any]) -> Link:
        d = v.get("d")
        return cls(
            str(v["a"]),
            int(v["f1"]),
            int(v["l"]),
            Decision(str(d[0]), int(d[1])) if d else None,
            tuple((str(c[0]), int(c[1])) for c in v.get("c") or ()),
            None if v.get("fam") is None else str(v["fam"]),
        )


@dataclass
class EntityEntry:
    kind: str
    accounts: dict[str, Seen] = field(default_factory=dict)
    decisions: dict[str, Decision] = field(default_factory=dict)
    overflow: int = 0  # accounts dropped for MAX_ACCOUNTS since the entry began

    def see(
        self,
        account_id: str,
        at_ms: int,
        family: str | None = None,
        case_id: str | None = None,
        family_at: int | None = None,
    ) -> None:
        """A sighting (or an ask, which names its case): idempotent, so a replay of the
        same records leaves the entry as it was."""
        account_id = account_id[:ACCOUNT_ID_MAX]
        seen = self.accounts.get(account_id)
        if seen is None:
            seen = self.accounts[account_id] = Seen(at_ms, at_ms)
        else:
            seen.first_ms, seen.last_ms = min(seen.first_ms, at_ms), max(seen.last_ms, at_ms)
        if family:
            at = at_ms if family_at is None else family_at
            if seen.family_at is None or at < seen.family_at:
                seen.family, seen.family_at = family[:FAMILY_MAX], at
        if case_id:
            case_id = case_id[:CASE_ID_MAX]
            known = {c[0]: c for c in seen.cases}
            if case_id not in known:
                seen.cases = [*seen.cases, [case_id, at_ms]][-MAX_CASES:]
            elif at_ms > known[case_id][1]:  # a later version of the case asked
                known[case_id][1] = at_ms
        if len(self.accounts) > MAX_ACCOUNTS:
            ordered = sorted(self.accounts.items(), key=lambda kv: (kv[1].last_ms, kv[0]))
            for gone, _ in ordered[: len(self.accounts) - MAX_ACCOUNTS]:
                del self.accounts[gone]
                self.overflow += 1

    def decide(
        self, account_id: str, decision: str, at_ms: int, case_id: str | None = None
    ) -> None:
        """An analyst's decision on an account seen with the entity: the latest wins,
        except that a FALSE_POSITIVE (on another case of the account) leaves a
        CONFIRMED_FRAUD standing. Not kept when the entity was long established for the
        account before the decision (DECISION_NEW_D)."""
        if decision not in DECISIONS:
            return
        account_id = account_id[:ACCOUNT_ID_MAX]
        seen = self.accounts.get(account_id)
        if seen is not None and case_id:  # decided: the case is no longer open
            seen.cases = [c for c in seen.cases if c[0] != case_id[:CASE_ID_MAX]]
        if seen is not None and seen.first_ms < at_ms - DECISION_NEW_D * DAY_MS:
            return
        known = self.decisions.get(account_id)
        if known is not None and known.decision == "CONFIRMED_FRAUD" != decision:
            return
        if known is None or at_ms >= known.at_ms:
            self.decisions[account_id] = Decision(decision, at_ms)
        if len(self.decisions) > MAX_ACCOUNTS:  # false positives go first, then the oldest
            ordered = sorted(
                self.decisions.items(),
                key=lambda kv: (kv[1].decision == "CONFIRMED_FRAUD", kv[1].at_ms, kv[0]),
            )
            for gone, _ in ordered[: len(self.decisions) - MAX_ACCOUNTS]:
                del self.decisions[gone]

    def expire(self, now_ms: int, lookback_ms: int) -> None:
        oldest = now_ms - lookback_ms
        for a in [a for a, s in self.accounts.items() if s.last_ms < oldest]:
            del self.accounts[a]
        kept = now_ms - DECISION_RETAIN_D * DAY_MS
        for a in [a for a, d in self.decisions.items() if d.at_ms < kept]:
            del self.decisions[a]

    def empty(self) -> bool:
        return not self.accounts and not self.decisions

    def links(self, account_id: str, now_ms: int, lookback_ms: int) -> list[Link]:
        """The other accounts seen with the entity within the lookback before `now_ms`,
        and those an analyst decided on, most recently seen first."""
        oldest, account_id = now_ms - lookback_ms, account_id[:ACCOUNT_ID_MAX]
        # As of `now_ms`, whatever the index read after it: last seen no later than then,
        # the cases that asked by then (so the answer, part of the case's content, does
        # not depend on when the ask was read).
        out = [
            Link(
                a,
                s.first_ms,
                min(s.last_ms, now_ms),
                self.decisions.get(a),
                tuple((str(c), int(at)) for c, at in s.cases if at <= now_ms),
                s.family if s.family_at is not None and s.family_at <= now_ms else None,
            )
            for a, s in self.accounts.items()
            if a != account_id and oldest <= s.last_ms and s.first_ms <= now_ms
        ]
        listed = {link.account_id for link in out}
        kept = now_ms - DECISION_RETAIN_D * DAY_MS  # as of the ask, whenever entries expire
        out = [
            x
            if x.decision is None or kept <= x.decision.at_ms <= now_ms
            else replace(x, decision=None)
            for x in out
        ]
        out += [
            Link(a, d.at_ms, d.at_ms, d)
            for a, d in self.decisions.items()
            if a != account_id and a not in listed and kept <= d.at_ms <= now_ms
        ]
        return sorted(out, key=lambda link: (-link.last_ms, link.account_id))

    # -- the changelog's bytes ------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "k": self.kind,
            "a": {
                a: [s.first_ms, s.last_ms, s.cases, s.family, s.family_at]
                for a, s in self.accounts.items()
            },
            "d": {a: [d.decision, d.at_ms] for a, d in self.decisions.items()},
            "o": self.overflow,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> EntityEntry:
        return cls(
            kind=str(value["k"]),
            accounts={
                a: Seen(
                    int(v[0]),
                    int(v[1]),
                    [[str(c[0]), int(c[1])] if isinstance(c, list) else [str(c), 0] for c in v[2]]
                    if len(v) > 2
                    else [],
                    v[3] if len(v) > 3 else None,
                    v[4] if len(v) > 4 else None,
                )
                for a, v in value["a"].items()
            },
            decisions={a: Decision(str(v[0]), int(v[1])) for a, v in value.get("d", {}).items()},
            overflow=int(value.get("o", 0)),
        )


def max_bytes() -> int:
    """The largest an entry can serialise to: MAX_ACCOUNTS accounts seen and as many
    decided on, every id at its longest, every number at its widest."""
    widest = 2**63 - 1
    entry = EntityEntry("device")
    for i in range(MAX_ACCOUNTS):
        account = f"{i:0{ACCOUNT_ID_MAX}d}"
        cases = [[f"{i}{k:0{CASE_ID_MAX - 1}d}"[:CASE_ID_MAX], widest] for k in range(MAX_CASES)]
        entry.accounts[account] = Seen(widest, widest, cases, "f" * FAMILY_MAX, widest)
        entry.decisions[f"d{account}"[:ACCOUNT_ID_MAX]] = Decision("CONFIRMED_FRAUD", widest)
    entry.overflow = widest
    return len(json.dumps(entry.to_json(), separators=(",", ":")).encode())
