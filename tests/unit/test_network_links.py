"""Linked accounts through the processor on plain dicts: sightings, asks and answers
carried by an in-process stand-in for the two internal topics (issue 25).

The stand-in keeps every record produced; `pump` hands each back to the processor as
the broker would, in order. Nothing here reads the processor's own case assembly to
decide what a link is: the tests plant the shared values and look for them.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from streamproc.brief.model import ReasonCode, RiskLevel
from streamproc.config import Settings
from streamproc.contracts.codec import AvroCodec
from streamproc.contracts.records import from_json
from streamproc.engine.dlq import InMessage
from streamproc.engine.network import Network
from streamproc.engine.processor import CaseProcessor
from streamproc.network.entities import EntityHasher
from streamproc.ops.metrics import Metrics
from streamproc.sim.scenario import HOUR, MIN, _Builder
from tests.conftest import ALERT_TOPIC, SIG_TOPIC, TXN_TOPIC

KEY = b"entity-key-for-tests-0123456789"
NOW = 1_790_000_000_000
DEVICE = "emu-7f3a-farm-device"
FEEDBACK = "fraud.brief-feedback.v1"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class Bus:
    """The internal topics: what was produced, in order, and what was handed back."""

    def __init__(self) -> None:
        self.records: list[tuple[str, int, bytes, bytes | None]] = []
        self.read = 0
        self.drop_answers = False

    def produce(self, topic: str, partition: int, key: bytes, value: bytes | None) -> None:
        self.records.append((topic, partition, key, value))


class Worker:
    def __init__(
        self,
        codec: AvroCodec,
        bus: Bus,
        tables: dict[str, dict[str, Any]] | None = None,
        owns: bool = False,
        **settings: Any,
    ) -> None:
        self.clock, self.codec, self.bus, self.metrics = Clock(), codec, bus, Metrics()
        self.tables = tables or {n: {} for n in ("windows", "cases", "pending", "entities")}
        s = Settings(**{"case_settle_s": 1.0, "lookback_h": 100_000, **settings})
        self.s = s
        self.network = Network(s, EntityHasher(KEY), self.metrics, self.tables["entities"],
                               bus.produce, 6, clock=self.clock,
                               owns=lambda _p: owns)  # fmt: skip
        self.p = CaseProcessor(s, codec, self.metrics, self.tables["windows"],
                               self.tables["cases"], self.tables["pending"], clock=self.clock,
                               network=self.network)  # fmt: skip
        self.offset = 0

    def send(self, topic: str, events: list[dict[str, Any]]) -> None:
        for e in events:
            record = from_json(self.codec.schemas.for_topic(topic), e)
            self.offset += 1
            value = self.codec.encode(topic, record)
            out = self.p.on_input(
                InMessage(topic, 0, self.offset, e["account_id"].encode(), value, [])
            )
            assert out is None, out

    def pump(self) -> None:
        bus = self.bus
        while bus.read < len(bus.records):
            topic, partition, key, value = bus.records[bus.read]
            bus.read += 1
            if topic == self.s.topics.entity_links and bus.drop_answers:
                continue
            self.offset += 1
            out = self.p.on_input(InMessage(topic, partition, self.offset, key, value, []))
            assert out is None, out

    def settle(self) -> list[Any]:
        self.p.inputs.note_end_offsets(
            {**{(t, 0): 0 for t in (TXN_TOPIC, SIG_TOPIC)}, **self.p.inputs.read_to},
            self.clock.now,
        )
        briefs = []
        for case_id, _ in self.p.due_now({0}):
            plan = self.p.plan_brief(case_id)
            if plan is not None:
                self.p.finalize_brief(plan)
                briefs.append(plan.brief)
        return briefs

    def brief_after(self, seconds: float = 2.0) -> list[Any]:
        """Settle, let the index answer, settle again: what the worker's loop does."""
        self.clock.now += seconds
        briefs = self.settle()
        for _ in range(3):
            self.pump()
            briefs += self.settle()
        return briefs


def _ring(b: _Builder, accounts: list[str], start: int, surname: str | None = None) -> None:
    """Each account signs in on the shared device and pays a little from it."""
    for i, acct in enumerate(accounts):
        at = start + i * 10 * MIN
        b.sig(acct, at, "LOGIN", DEVICE, geo="DE")
        b.txn(acct, at + MIN, 1_500, device_id=DEVICE, channel="CARD_NOT_PRESENT")
        if surname:
            b.s.alerts.append(b.alert(acct, f"case-{acct}", at + 2 * MIN, "R-DEV-1", "LOW", 0.1,
                                      [], customer_name=f"Ann {surname}"))  # fmt: skip


def _case(b: _Builder, acct: str, at: int, surname: str = "Okafor") -> list[dict[str, Any]]:
    s = b.sig(acct, at, "LOGIN", DEVICE, geo="DE")
    t = b.txn(acct, at + MIN, 48_000, device_id=DEVICE, channel="CARD_NOT_PRESENT")
    b.s.alerts.append(b.alert(acct, f"case-{acct}", at + 2 * MIN, "R-DEV-1", "MEDIUM", 0.3, [t],
                              customer_name=f"Chidi {surname}"))  # fmt: skip
    return [s, t]


def _send_all(w: Worker, b: _Builder) -> None:
    w.send(TXN_TOPIC, b.s.transactions)
    w.send(SIG_TOPIC, b.s.signals)
    w.pump()  # the sightings reach the index before any case asks
    w.send(ALERT_TOPIC, b.s.alerts)
    w.pump()


@pytest.fixture()
def bus() -> Bus:
    return Bus()


def test_a_device_shared_with_four_accounts_is_a_ring_and_the_brief_names_them(
    codec: AvroCodec, bus: Bus
) -> None:
    b = _Builder(1, NOW)
    others = [f"acct-farm-{i}" for i in range(4)]
    _ring(b, others, NOW - 20 * HOUR)
    carrying = _case(b, "acct-victim", NOW - HOUR)
    w = Worker(codec, bus)
    _send_all(w, b)
    (brief,) = w.brief_after()
    assert ReasonCode.LINKED_ACCOUNTS in brief.reason_codes
    assert brief.risk_level.rank >= RiskLevel.MEDIUM.rank
    assert sorted(la.account_id for la in brief.linked_accounts) == others
    assert {la.entity_kind.value for la in brief.linked_accounts} == {"DEVICE"}
    ids = {e["event_id"] for e in carrying}
    assert all(set(la.evidence_event_ids) == ids for la in brief.linked_accounts)
    fact = next(f for f in brief.key_facts if "other account" in f.text)
    assert "4 other account(s)" in fact.text and set(fact.evidence_event_ids) == ids
    # The planted raw device id is on no internal record, key or value.
    assert bus.records and not any(
        DEVICE.encode() in (k + (v or b"")) for _, _, k, v in bus.records
    )


def test_a_link_to_an_account_confirmed_as_fraud_raises_the_floor_to_high(
    codec: AvroCodec, bus: Bus
) -> None:
    b = _Builder(2, NOW)
    _case(b, "acct-first-victim", NOW - 30 * HOUR)
    w = Worker(codec, bus)
    _send_all(w, b)
    (first,) = w.brief_after()
    assert ReasonCode.LINKED_TO_CONFIRMED_FRAUD not in first.reason_codes
    decided = NOW - 20 * HOUR
    w.send(FEEDBACK, [{
        "event_id": "fb-1", "brief_id": first.brief_id, "brief_version": 1,
        "case_id": first.case_id, "account_id": "acct-first-victim",
        "decided_at": decided, "analyst_id": "an-1", "disposition": "CONFIRMED_FRAUD",
        "reason_codes_added": [], "reason_codes_removed": [], "facts_flagged": [],
        "actions_taken": [],
    }])  # fmt: skip
    w.pump()
    b2 = _Builder(3, NOW)
    _case(b2, "acct-next-victim", NOW - HOUR, surname="Meyer")
    _send_all(w, b2)
    (brief,) = w.brief_after()
    assert ReasonCode.LINKED_TO_CONFIRMED_FRAUD in brief.reason_codes
    assert brief.risk_level.rank >= RiskLevel.HIGH.rank
    (link,) = brief.linked_accounts
    assert link.account_id == "acct-first-victim" and link.disposition is not None
    assert link.disposition.value == "CONFIRMED_FRAUD" and link.disposition_at == decided
    assert any("confirmed as fraud" in f.text for f in brief.key_facts)


def test_a_false_positive_on_one_account_does_not_clear_another_confirmed_one(
    codec: AvroCodec, bus: Bus
) -> None:
    b = _Builder(4, NOW)
    _case(b, "acct-a", NOW - 40 * HOUR, surname="Ito")
    _case(b, "acct-b", NOW - 30 * HOUR, surname="Berg")
    w = Worker(codec, bus)
    _send_all(w, b)
    briefs = {x.account_id: x for x in w.brief_after()}
    for acct, disposition in (("acct-a", "CONFIRMED_FRAUD"), ("acct-b", "FALSE_POSITIVE")):
        w.send(FEEDBACK, [{
            "event_id": f"fb-{acct}", "brief_id": briefs[acct].brief_id, "brief_version": 1,
            "case_id": briefs[acct].case_id, "account_id": acct, "decided_at": NOW - 10 * HOUR,
            "analyst_id": "an-1", "disposition": disposition, "reason_codes_added": [],
            "reason_codes_removed": [], "facts_flagged": [], "actions_taken": [],
        }])  # fmt: skip
    w.pump()
    b2 = _Builder(5, NOW)
    _case(b2, "acct-c", NOW - HOUR, surname="Lund")
    _send_all(w, b2)
    (brief,) = w.brief_after()
    assert ReasonCode.LINKED_TO_CONFIRMED_FRAUD in brief.reason_codes
    decided = {
        la.account_id: la.disposition.value for la in brief.linked_accounts if la.disposition
    }
    assert decided == {"acct-a": "CONFIRMED_FRAUD", "acct-b": "FALSE_POSITIVE"}


def test_a_family_sharing_a_tablet_is_context_not_a_ring(codec: AvroCodec, bus: Bus) -> None:
    b = _Builder(6, NOW)
    family = [f"acct-family-{i}" for i in range(4)]
    _ring(b, family, NOW - 20 * HOUR, surname="Okafor")  # each has had an alert, same name
    _case(b, "acct-family-main", NOW - HOUR, surname="Okafor")
    w = Worker(codec, bus)
    _send_all(w, b)
    brief = next(x for x in w.brief_after() if x.account_id == "acct-family-main")
    assert ReasonCode.LINKED_ACCOUNTS not in brief.reason_codes
    assert brief.linked_accounts and all(la.household for la in brief.linked_accounts)
    assert any("same family name" in f.text for f in brief.key_facts)


def test_a_missing_answer_becomes_a_data_gap_after_the_bounded_wait(
    codec: AvroCodec, bus: Bus
) -> None:
    b = _Builder(7, NOW)
    _ring(b, ["acct-x"], NOW - 5 * HOUR)
    _case(b, "acct-y", NOW - HOUR)
    w = Worker(codec, bus, links_max_wait_ms=1500)
    _send_all(w, b)
    bus.drop_answers = True
    w.clock.now += 2.0
    assert w.settle() == []  # asked; held for the answer
    w.pump()
    w.clock.now += 1.0
    assert w.settle() == []  # still within the wait
    w.clock.now += 1.0
    (brief,) = w.settle()
    assert "link lookup timed out for 1 entity" in brief.data_gaps
    assert brief.linked_accounts == []


def test_a_restart_between_ask_and_answer_gives_the_clean_runs_brief_id(
    codec: AvroCodec,
) -> None:
    def events() -> _Builder:
        b = _Builder(8, NOW)
        _ring(b, ["acct-p", "acct-q"], NOW - 6 * HOUR)
        _case(b, "acct-r", NOW - HOUR)
        return b

    clean = Worker(codec, Bus())
    _send_all(clean, events())
    (clean_brief,) = clean.brief_after()
    assert len(clean_brief.linked_accounts) == 2

    bus = Bus()
    w = Worker(codec, bus)
    _send_all(w, events())
    w.clock.now += 2.0
    assert w.settle() == []  # the asks are out; the worker dies before any answer is read
    durable = copy.deepcopy(w.tables)  # what its changelogs hold
    unread = bus.read
    restarted = Worker(codec, bus, tables=durable)
    restarted.clock.now = w.clock.now + 30
    bus.read = unread  # the answers are read by the next owner
    briefs = restarted.brief_after(0.0)
    (brief,) = briefs
    assert brief.brief_id == clean_brief.brief_id
    assert [la.account_id for la in brief.linked_accounts] == ["acct-p", "acct-q"]


def test_entities_of_index_partitions_this_worker_owns_are_answered_without_the_topics(
    codec: AvroCodec,
) -> None:
    """One worker owning every partition: sightings and asks are applied to the entries
    at once (no round trip through the index topic), and the brief is the one the round
    trip gives."""

    def events() -> _Builder:
        b = _Builder(9, NOW)
        _ring(b, [f"acct-farm-{i}" for i in range(4)], NOW - 20 * HOUR)
        _case(b, "acct-victim", NOW - HOUR)
        return b

    remote = Worker(codec, Bus())
    _send_all(remote, events())
    (via_topics,) = remote.brief_after()
    bus = Bus()
    local = Worker(codec, bus, owns=True)
    _send_all(local, events())
    local.clock.now += 2.0
    (brief,) = local.settle()  # answered in the same step: no wait for a fetch
    assert brief.brief_id == via_topics.brief_id
    assert brief.linked_accounts == via_topics.linked_accounts
    assert not [r for r in bus.records if r[0] == "streamproc-entity-index"]
    assert local.tables["entities"] == remote.tables["entities"]


# -- the adversarial review's findings (each failed on b8e7997) ---------------------------


def _feedback(w: Worker, brief: Any, account: str, disposition: str, at: int) -> None:
    w.send(FEEDBACK, [{
        "event_id": f"fb-{account}-{disposition}", "brief_id": brief.brief_id,
        "brief_version": 1, "case_id": brief.case_id, "account_id": account,
        "decided_at": at, "analyst_id": "an-1", "disposition": disposition,
        "reason_codes_added": [], "reason_codes_removed": [], "facts_flagged": [],
        "actions_taken": [],
    }])  # fmt: skip
    w.pump()


def test_a_confirmed_victims_long_established_payee_carries_no_decision(
    codec: AvroCodec, bus: Bus
) -> None:
    """Confirmed fraud on a victim marks what was new around the fraud, not the landlord
    the victim had paid for weeks: a tenant paying that landlord is not floored HIGH."""
    landlord = "DE02120300000000202051"
    b = _Builder(20, NOW)
    b.transfer("acct-victim", NOW - 30 * 24 * HOUR, 90_000, counterparty_iban=landlord)
    pay = b.transfer("acct-victim", NOW - 50 * HOUR, 90_000, counterparty_iban=landlord)
    b.s.alerts.append(b.alert("acct-victim", "case-acct-victim", NOW - 50 * HOUR + MIN,
                              "R-APP-1", "HIGH", 0.8, [pay], customer_name="Vi Adler"))  # fmt: skip
    w = Worker(codec, bus, lookback_h=1000)
    _send_all(w, b)
    (victim,) = w.brief_after()
    _feedback(w, victim, "acct-victim", "CONFIRMED_FRAUD", NOW - 40 * HOUR)
    b2 = _Builder(21, NOW)
    rent = b2.transfer("acct-tenant", NOW - HOUR, 90_000, counterparty_iban=landlord)
    b2.s.alerts.append(b2.alert("acct-tenant", "case-acct-tenant", NOW - HOUR + MIN, "R-APP-1",
                                "LOW", 0.1, [rent], customer_name="Te Nant"))  # fmt: skip
    _send_all(w, b2)
    (brief,) = w.brief_after()
    assert ReasonCode.LINKED_TO_CONFIRMED_FRAUD not in brief.reason_codes
    assert brief.risk_level is RiskLevel.LOW


def test_a_later_false_positive_does_not_erase_the_same_accounts_confirmed_fraud(
    codec: AvroCodec, bus: Bus
) -> None:
    b = _Builder(22, NOW)
    _case(b, "acct-mule", NOW - 30 * HOUR, surname="Ito")
    w = Worker(codec, bus)
    _send_all(w, b)
    (mule,) = w.brief_after()
    _feedback(w, mule, "acct-mule", "CONFIRMED_FRAUD", NOW - 25 * HOUR)
    _feedback(w, mule, "acct-mule", "FALSE_POSITIVE", NOW - 20 * HOUR)
    b2 = _Builder(23, NOW)
    _case(b2, "acct-next", NOW - HOUR, surname="Berg")
    _send_all(w, b2)
    (brief,) = w.brief_after()
    assert ReasonCode.LINKED_TO_CONFIRMED_FRAUD in brief.reason_codes


def test_an_account_id_longer_than_the_old_cut_is_never_its_own_link(
    codec: AvroCodec, bus: Bus
) -> None:
    long_id = "acct-" + "x" * 100
    b = _Builder(24, NOW)
    _case(b, long_id, NOW - HOUR)
    w = Worker(codec, bus)
    _send_all(w, b)
    (brief,) = w.brief_after()
    assert brief.linked_accounts == []


def test_the_brief_id_does_not_depend_on_when_the_index_reads_the_ask(codec: AvroCodec) -> None:
    """Another account's sighting and case made after this case's alert, read by the
    index before or after this case's ask: the same answer, the same brief id."""

    def run(later_first: bool) -> Any:
        bus = Bus()
        w = Worker(codec, bus)
        b = _Builder(25, NOW)
        _ring(b, ["acct-b"], NOW - 5 * HOUR)
        _case(b, "acct-a", NOW - 2 * HOUR)
        _send_all(w, b)
        later = _Builder(26, NOW)
        _case(later, "acct-b", NOW - 2 * HOUR + 28 * MIN, surname="Berg")  # after a's alert
        if later_first:
            _send_all(w, later)
            w.clock.now += 2
            w.settle()
            w.pump()
        briefs = w.brief_after()
        return next(x for x in briefs if x.account_id == "acct-a")

    early, late = run(False), run(True)
    assert early.brief_id == late.brief_id
    assert early.risk_level == late.risk_level and early.reason_codes == late.reason_codes


def test_a_malformed_answer_is_dead_lettered_and_the_case_is_still_briefed(
    codec: AvroCodec, bus: Bus
) -> None:
    b = _Builder(27, NOW)
    _ring(b, ["acct-x"], NOW - 5 * HOUR)
    _case(b, "acct-y", NOW - HOUR)
    w = Worker(codec, bus, links_max_wait_ms=1000)
    _send_all(w, b)
    bus.drop_answers = True
    w.clock.now += 2.0
    assert w.settle() == []
    w.pump()
    state = w.tables["cases"]["case-acct-y"]
    (q,) = state["asked"]
    bad = json.dumps({"q": q, "c": "case-acct-y", "e": "e", "k": "device",
                      "links": [{"a": "acct-z"}], "o": 0}).encode()  # fmt: skip
    out = w.p.on_input(InMessage("streamproc-entity-links", 0, 999, b"acct-y", bad, []))
    assert out is not None and out.topic == "fraud.dlq.v1"
    w.clock.now += 2.0
    (brief,) = w.settle()
    assert "link lookup timed out for 1 entity" in brief.data_gaps


def test_an_old_case_on_a_flatmate_does_not_make_a_ring(codec: AvroCodec, bus: Bus) -> None:
    """A linked account's case of a month ago is no open case now: context, no floor."""
    landlord = "DE02120300000000202051"
    b = _Builder(28, NOW)
    old = b.transfer("acct-mate", NOW - 30 * 24 * HOUR, 60_000, counterparty_iban=landlord)
    b.s.alerts.append(b.alert("acct-mate", "case-acct-mate", NOW - 30 * 24 * HOUR + MIN,
                              "R-APP-1", "LOW", 0.1, [old], customer_name="Ma Te"))  # fmt: skip
    w = Worker(codec, bus, lookback_h=1000)
    _send_all(w, b)
    w.brief_after()
    b2 = _Builder(29, NOW)
    rent = b2.transfer("acct-me", NOW - HOUR, 60_000, counterparty_iban=landlord)
    b2.s.alerts.append(b2.alert("acct-me", "case-acct-me", NOW - HOUR + MIN, "R-APP-1", "LOW",
                                0.1, [rent], customer_name="Me Me"))  # fmt: skip
    _send_all(w, b2)
    (brief,) = w.brief_after()
    assert ReasonCode.LINKED_ACCOUNTS not in brief.reason_codes
    assert [la.account_id for la in brief.linked_accounts] == ["acct-mate"]


def test_entries_not_written_for_the_lookback_are_swept_and_decisions_kept_longer(
    codec: AvroCodec, bus: Bus
) -> None:
    b = _Builder(30, NOW)
    _case(b, "acct-old", NOW - 30 * HOUR)
    b.sig("acct-other", NOW - 29 * HOUR, "LOGIN", "dev-only-once", geo="DE")
    w = Worker(codec, bus, owns=True)
    _send_all(w, b)
    (old,) = w.brief_after()
    _feedback(w, old, "acct-old", "CONFIRMED_FRAUD", NOW - 29 * HOUR)
    assert len(w.tables["entities"]) == 2
    w.clock.now += 36 * 86_400  # past the 35-day lookback, within the 90-day retention
    assert w.network.sweep(lambda _p: True) == 1  # the device seen once; the decided kept
    (key,) = w.tables["entities"]
    assert w.tables["entities"][key]["d"]
    w.network._sweep_keys.clear()
    assert w.network.sweep(lambda _p: False) == 0  # not this worker's partition: left
    w.clock.now += 60 * 86_400
    assert w.network.sweep(lambda _p: True) == 1 and not w.tables["entities"]


def test_a_case_asks_about_at_most_its_bound_of_entities_and_says_so(
    codec: AvroCodec, bus: Bus
) -> None:
    b = _Builder(31, NOW)
    for i in range(30):
        b.sig("acct-many", NOW - HOUR - i * MIN, "LOGIN", f"dev-{i}", geo="DE")
    pay = b.txn("acct-many", NOW - HOUR + MIN, 5_000, device_id="dev-0")
    b.s.alerts.append(b.alert("acct-many", "case-acct-many", NOW - HOUR + 2 * MIN, "R-DEV-1",
                              "LOW", 0.1, [pay], customer_name="Ma Ny"))  # fmt: skip
    w = Worker(codec, bus)
    _send_all(w, b)
    (brief,) = w.brief_after()
    assert len(w.tables["cases"]["case-acct-many"]["asked"]) == 24
    assert any("links not looked up for 6 more entities" in g for g in brief.data_gaps)


def test_a_surname_learned_late_resights_each_entity_once(codec: AvroCodec, bus: Bus) -> None:
    """Found in review: when an account's surname became known, its entities were sent
    again once per gap of more than an hour between the events carrying them (a daily
    login on one device for a week: seven sightings), not once per entity."""
    from streamproc.network import links as L

    b = _Builder(6, NOW)
    acct = "acct-weekly"
    for day in range(7):
        b.sig(acct, NOW - (7 - day) * 24 * HOUR, "LOGIN", DEVICE, geo="DE")
    w = Worker(codec, bus)
    w.send(SIG_TOPIC, b.s.signals)
    before = len(bus.records)
    b.s.alerts.append(b.alert(acct, f"case-{acct}", NOW - HOUR, "R-DEV-1", "LOW", 0.1, [],
                              customer_name="Ann Okafor"))  # fmt: skip
    w.send(ALERT_TOPIC, b.s.alerts)
    again = [L.decode(v) for t, _, _, v in bus.records[before:] if t == w.s.topics.entity_index]
    device = [m for m in again if m["t"] == L.SIGHTING and m["k"] == "device"]
    assert len(device) == 1 and device[0]["f"], device
