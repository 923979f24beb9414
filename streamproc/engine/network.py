"""The worker's side of linked accounts: sightings out, the index kept, asks answered,
answers joined to their cases (network/links.py has the messages and the assessment).

Every record this sends goes through the changelog's producer, with the writes of the
sub-batch (or model task) at hand: it is delivered before the offsets of the records
that caused it are acknowledged, so a crash loses no sighting, ask or answer; a replay
sends them again, and each is idempotent where it lands (an entry keeps first and last
seen, an answer is stored by its ask's id).

State, in the tables the processor already writes with the record's partition:
    entities  entity key → EntityEntry JSON      (written on the index's partition)
    cases     case_id → {..., "links": {ask_id: answer}, "asked": {ask_id: wall s},
                         "entities": [[kind, key], ...], "family": hash}
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from streamproc.config import Settings
from streamproc.domain.case import Case
from streamproc.network import links as L
from streamproc.network.entities import EntityHasher, EntityKind, linkable
from streamproc.network.index import (
    ACCOUNT_ID_MAX,
    DECISION_RETAIN_D,
    FAMILY_MAX,
    EntityEntry,
    Link,
)
from streamproc.ops.metrics import Metrics

log = logging.getLogger(__name__)
Table = MutableMapping[str, Any]
Produce = Callable[[str, int, bytes, bytes | None], None]
SIGHTING_REFRESH_MS = 3_600_000  # a pair already sent is sent again when seen this much later
MAX_CASE_ENTITIES = 24  # entities a case asks about (its state holds their answers)
MAX_LINKS_STORED = 64  # links kept per answer: the index's own bound (MAX_ACCOUNTS)
SWEEP_BUDGET = 20_000  # entries checked per sweep call
REMEMBERED = 200_000  # (account, entity) pairs and raw values remembered (then forgotten)
_MISSING = object()


@dataclass(frozen=True)
class LinkState:
    """What a due case has of its links: the answers, what is still awaited, the gap."""

    answers: tuple[L.Answered, ...]
    waiting: int  # entities asked and not answered
    gaps: tuple[str, ...] = ()


class Network:
    def __init__(
        self,
        settings: Settings,
        hasher: EntityHasher,
        metrics: Metrics,
        entities: Table,
        produce: Produce,
        partitions: int,
        clock: Callable[[], float] = time.time,
        owns: Callable[[int], bool] = lambda _partition: False,
    ) -> None:
        self.s, self.hasher, self.metrics = settings, hasher, metrics
        self.entities, self.produce, self.partitions = entities, produce, partitions
        self.topics = settings.topics
        self.clock = clock
        self.lookback_ms = int(settings.links_lookback_h * 3600 * 1000)
        self.max_wait_s = settings.links_max_wait_ms / 1000
        self._keys: dict[tuple[EntityKind, str], str | None] = {}
        self._sent: dict[tuple[str, str], tuple[int, int]] = {}
        # When this worker began waiting for each case's answers. In memory, as the inputs
        # gate's wait is: a case taken over after a crash waits afresh, since the answers
        # to its durable asks are still to be read from the links topic.
        self._since: dict[str, float] = {}
        # Whether this worker owns an index partition now (co-partitioned: the input
        # partition of the same number). Its messages are then applied here at once, not
        # sent round through the topic (`_send_index`).
        self.owns = owns
        self._counted = {t: metrics.links_messages.labels(t) for t in ("s", "q", "d", "answer")}
        self._sent_n = dict.fromkeys(self._counted, 0)  # since `count_messages`
        self._sweep_keys: list[str] = []  # the sweep's pass over the entries

    # -- the account's owner: sightings ---------------------------------------------------

    def key_of(self, kind: EntityKind, value: str) -> str | None:
        cached = self._keys.get((kind, value), _MISSING)
        if cached is _MISSING:
            if len(self._keys) >= REMEMBERED:
                self._keys.clear()
            cached = self._keys[(kind, value)] = self.hasher.key_of(kind, value)
        return cached  # type: ignore[return-value]

    def observe(
        self,
        kind: str,
        record: dict[str, Any],
        family: str | None,
        family_at: int | None = None,
    ) -> None:
        """An input event of `kind` ("transaction", "signal", "alert") was applied: send a
        sighting of each entity it carries, unless this worker sent that account's
        sighting of it lately (the index keeps first and last seen, not counts)."""
        account, at = record["account_id"], record["occurred_at"]
        for entity_kind, value in linkable(kind, record):
            key = self.key_of(entity_kind, value)
            if key is None:
                continue
            sent = self._sent.get((account, key))
            if sent is not None and sent[0] <= at <= sent[1] + SIGHTING_REFRESH_MS:
                continue
            self._sight(entity_kind, key, account, _widened(sent, at), at, family, family_at)

    def resight(
        self, records: list[tuple[str, dict[str, Any]]], family: str, family_at: int
    ) -> None:
        """The account's family became known (its first alert with a name): each of its
        entities is sighted once more, carrying it, so the index can tell a household from
        a ring. Once per entity, at the newest time the account was seen with it (the
        index already holds when it was first)."""
        seen: dict[tuple[str, str], tuple[EntityKind, tuple[int, int]]] = {}
        for kind, record in records:
            for entity_kind, value in linkable(kind, record):
                key = self.key_of(entity_kind, value)
                if key is None:
                    continue
                pair, at = (record["account_id"], key), int(record["occurred_at"])
                before = seen.get(pair)
                seen[pair] = (entity_kind, _widened(before[1] if before else None, at))
        for (account, key), (entity_kind, span) in seen.items():
            self._sight(entity_kind, key, account, span, span[1], family, family_at)

    def _sight(
        self,
        kind: EntityKind,
        key: str,
        account: str,
        span: tuple[int, int],
        at: int,
        family: str | None,
        family_at: int | None,
    ) -> None:
        """Send the account's sighting of the entity at `at`; `span` (first, last) is what
        this worker has now sent of the pair."""
        if len(self._sent) >= REMEMBERED:
            self._sent.clear()
        self._sent[account, key] = span
        self._send_index(key, L.sighting(kind, key, account, at, family, family_at))

    def family_of(self, name: str | None) -> str | None:
        return L.family_of(self.hasher, name)

    def _send_index(self, key: str, message: dict[str, Any]) -> dict[str, Any] | None:
        """To the entity's index partition: applied here when this worker owns it (the
        entry's changelog record, written under the index partition, is then what makes
        it durable), else produced to the index topic. Applying a message twice changes
        nothing, so one applied here and read back after a rebalance is harmless. Returns
        the answer to an ask applied here."""
        partition = L.partition_of(key, self.partitions)
        self._sent_n[message["t"]] += 1
        if self.owns(partition):
            table = self.entities
            before = getattr(table, "partition", None)
            if before is not None:
                table.partition = partition  # type: ignore[attr-defined]
            try:
                return self._apply(message)
            finally:
                if before is not None:
                    table.partition = before  # type: ignore[attr-defined]
        self.produce(self.topics.entity_index, partition, key.encode(), L.encode(message))
        return None

    def count_messages(self) -> None:
        """The messages counted since the last call go to the metric (once per
        sub-batch, with the records consumed)."""
        for t, n in self._sent_n.items():
            if n:
                self._counted[t].inc(n)
                self._sent_n[t] = 0

    # -- the entity's owner: the index --------------------------------------------------------

    def on_index(self, value: bytes) -> None:
        """Apply one index message read from the topic; answer an ask on the links topic."""
        message = L.decode(value)
        if message["t"] == L.ASK and not 0 <= int(message["p"]) < self.partitions:
            raise ValueError(f"an ask for partition {message['p']} of {self.partitions}")
        out = self._apply(message)
        if out is not None:
            account = str(message["a"])
            self.produce(
                self.topics.entity_links, int(message["p"]), account.encode(), L.encode(out)
            )
            self._sent_n["answer"] += 1

    def _apply(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """The message applied to its entity's entry; an ask's answer."""
        key = str(message["e"])
        raw = self.entities.get(key)
        if message["t"] == L.SIGHTING and _sighting_fast(
            self.entities, key, raw, message, self.clock()
        ):
            return None
        entry = L.apply(
            EntityEntry.from_json(raw) if raw is not None else None, message, self.lookback_ms
        )
        if entry.empty():
            if raw is not None:
                del self.entities[key]
        else:
            self.entities[key] = {**entry.to_json(), "w": self.clock()}
        return L.answer(entry, message, self.lookback_ms) if message["t"] == L.ASK else None

    def sweep(self, owns: Callable[[int], bool], budget: int = SWEEP_BUDGET) -> int:
        """Delete entries not written for the lookback (an entry with decisions: for
        their retention, if longer), on the index partitions this worker owns; checks at
        most `budget` entries a call, resuming where the last call stopped. Returns how
        many it deleted. A sub-batch must be in hand (its checkpoint carries the
        deletions)."""
        if not self._sweep_keys:
            self._sweep_keys = list(self.entities)
        now, deleted = self.clock(), 0
        lookback_s = self.lookback_ms / 1000
        decided_s = max(lookback_s, DECISION_RETAIN_D * 86_400)
        table = self.entities
        before = getattr(table, "partition", None)
        try:
            for _ in range(min(budget, len(self._sweep_keys))):
                key = self._sweep_keys.pop()
                value = table.get(key)
                if value is None:
                    continue
                partition = L.partition_of(key, self.partitions)
                keep_s = decided_s if value.get("d") else lookback_s
                if owns(partition) and now - float(value.get("w", now)) > keep_s:
                    if before is not None:
                        table.partition = partition  # type: ignore[attr-defined]
                    del table[key]
                    deleted += 1
        finally:
            if before is not None:
                table.partition = before  # type: ignore[attr-defined]
        if deleted:
            self.metrics.state_expired.labels("entities").inc(deleted)
        return deleted

    # -- the case's owner: asks, answers, decisions ----------------------------------------------

    def case_entities(self, case: Case) -> dict[str, tuple[EntityKind, tuple[str, ...]]]:
        return L.case_entities(self.key_of, case)

    def links_for(self, state: dict[str, Any], case: Case, partition: int) -> LinkState:
        """The case's answers so far; asks what it has not asked yet (written into `state`,
        which the caller writes back). Waits at most LINKS_MAX_WAIT_MS from the first ask."""
        as_of = case.alerts[-1]["occurred_at"]
        family, family_at = state.get("family"), state.get("family_at")
        wanted, left_out = _bounded(self.case_entities(case))
        state["entities"] = sorted([kind.value, key] for key, (kind, _) in wanted.items())
        asked, got = state.setdefault("asked", {}), state.setdefault("links", {})
        now = self.clock()
        current = {L.ask_id(case.case_id, key, as_of): key for key in wanted}
        for old in [q for q in asked if q not in current]:  # an earlier version's asks
            del asked[old]
        for old in [q for q in got if q not in current]:
            del got[old]
        answers, waiting = [], 0
        for key, (kind, evidence) in sorted(wanted.items()):
            q = L.ask_id(case.case_id, key, as_of)
            answer = got.get(q)
            if answer is not None:
                answers.append(L.Answered.of(kind, key, evidence, answer))
                continue
            if q not in asked:
                asked[q] = now
                local = self._send_index(
                    key,
                    L.ask(
                        kind.value,
                        key,
                        case.account_id,
                        case.case_id,
                        as_of,
                        partition,
                        family,
                        family_at,
                    ),
                )
                if local is not None:  # this worker owns the entity: answered at once
                    got[q] = {"links": local["links"], "o": local.get("o", 0)}
                    answers.append(L.Answered.of(kind, key, evidence, local))
                    continue
            waiting += 1
        gaps: list[str] = []
        if left_out:
            gaps.append(
                f"links not looked up for {left_out} more entities of this case (at most "
                f"{MAX_CASE_ENTITIES} are)"
            )
        since = self._since.setdefault(case.case_id, now) if waiting else None
        if since is not None and now - since >= self.max_wait_s:
            gaps.append(
                f"link lookup timed out for {waiting} entit{'y' if waiting == 1 else 'ies'}"
            )
            self.metrics.links_timed_out.inc(waiting)
            waiting = 0
        if not waiting:
            started = self._since.pop(case.case_id, None)
            if started is not None:
                self.metrics.links_wait.observe(max(0.0, now - started))
        return LinkState(tuple(answers), waiting, tuple(gaps))

    def forget(self, keep: Callable[[str], bool]) -> None:
        """Drop the waits of cases no longer pending here (briefed elsewhere)."""
        for case_id in [c for c in self._since if not keep(c)]:
            del self._since[case_id]

    def on_answer(self, value: bytes, cases: Table) -> str | None:
        """Store an answer in its case's state; returns the case id (now maybe due)."""
        answer = L.decode_answer(value)
        links = [Link.from_json(x) for x in answer["links"]]  # a bad one: dead-lettered
        if len(links) > MAX_LINKS_STORED:
            raise ValueError(f"an answer of {len(links)} links (at most {MAX_LINKS_STORED})")
        overflow = int(answer.get("o", 0))
        case_id = str(answer["c"])
        state = cases.get(case_id)
        if state is None:
            return None
        got = state.setdefault("links", {})
        if answer["q"] in got:
            return None  # a replay, or a second ask's answer: the first stands
        if answer["q"] not in state.get("asked", {}):
            return None  # an answer to an ask of an earlier version of the case
        got[answer["q"]] = {"links": [x.to_json() for x in links], "o": overflow}
        cases[case_id] = state
        # Due now only if it is waiting for its links here (not if a new alert's settle
        # delay runs: a late answer to an earlier ask must not cut that short).
        return case_id if case_id in self._since else None

    def on_decision(self, feedback: dict[str, Any], state: dict[str, Any] | None) -> None:
        """An analyst's decision on a case: sent to each of the entities its case carried."""
        if feedback.get("disposition") not in ("CONFIRMED_FRAUD", "FALSE_POSITIVE"):
            return
        if state is None:
            return
        for kind, key in state.get("entities") or ():
            self._send_index(
                key,
                L.decision(
                    kind,
                    key,
                    feedback["account_id"],
                    feedback["case_id"],
                    feedback["disposition"],
                    int(feedback["decided_at"]),
                ),
            )


def _sighting_fast(
    table: Table, key: str, raw: Any, message: dict[str, Any], wall_s: float
) -> bool:
    """The two common sightings without building the entry: the entity's first (the
    entry network/index.py would write, written directly), and one that changes nothing
    (the account already seen then, its family known): no write at all. False: neither."""
    account = str(message["a"])[:ACCOUNT_ID_MAX]
    at, family = int(message["at"]), message.get("f")
    family = family[:FAMILY_MAX] if family else None
    family_at = (message.get("fa") or at) if family else None
    if raw is None:
        table[key] = {
            "k": str(message["k"]),
            "a": {account: [at, at, [], family, family_at]},
            "d": {},
            "o": 0,
            "w": wall_s,  # the wall time of its last write: the sweep's clock, as windows'
        }
        return True
    seen = raw["a"].get(account)
    return (
        seen is not None
        and seen[0] <= at <= seen[1]
        and (
            family is None
            or (
                len(seen) > 4 and seen[3] == family and seen[4] is not None and seen[4] <= family_at
            )
        )
    )


def _widened(span: tuple[int, int] | None, at: int) -> tuple[int, int]:
    """(first, last) stretched to take in `at`."""
    return (at, at) if span is None else (min(span[0], at), max(span[1], at))


_KIND_ORDER = {k: i for i, k in enumerate(EntityKind)}


def _bounded(
    wanted: dict[str, tuple[EntityKind, tuple[str, ...]]],
) -> tuple[dict[str, tuple[EntityKind, tuple[str, ...]]], int]:
    """At most MAX_CASE_ENTITIES of the case's entities (devices, then IBANs, cards, IPs,
    emails, phones; the most cited first), and how many were left out."""
    if len(wanted) <= MAX_CASE_ENTITIES:
        return wanted, 0
    ranked = sorted(wanted.items(), key=lambda kv: (_KIND_ORDER[kv[1][0]], -len(kv[1][1]), kv[0]))
    return dict(ranked[:MAX_CASE_ENTITIES]), len(wanted) - MAX_CASE_ENTITIES
