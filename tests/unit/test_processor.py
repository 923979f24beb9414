"""The case processor on plain dicts: inputs, DLQ, settle ticks, versions, crash safety."""

from __future__ import annotations

import json
from typing import Any

import pytest

from streamproc.config import Settings
from streamproc.contracts.codec import AvroCodec
from streamproc.contracts.records import normalize
from streamproc.engine.dlq import InMessage
from streamproc.engine.inputs import END_OFFSETS_KEPT
from streamproc.engine.processor import CaseProcessor
from streamproc.engine.ticks import GRACE_S, RESEND_S
from streamproc.ops.metrics import Metrics
from streamproc.sim.scenario import Scenario
from tests.conftest import ALERT_TOPIC, SIG_TOPIC, TXN_TOPIC

SETTLE = 5.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self, codec: AvroCodec) -> None:
        self.clock = Clock()
        self.metrics = Metrics()
        self.tables: dict[str, dict[str, Any]] = {"windows": {}, "cases": {}, "pending": {}}
        settings = Settings(case_settle_s=SETTLE, lookback_h=100_000)
        self.p = CaseProcessor(
            settings,
            codec,
            self.metrics,
            self.tables["windows"],
            self.tables["cases"],
            self.tables["pending"],
            clock=self.clock,
        )
        self.codec = codec
        self.offset = 0
        # What the broker answers for log-end offsets at each settle: by default the log
        # is what was sent; tests add records not processed yet, or stop the answers.
        self.log_end: dict[tuple[str, int], int] = {}
        self.broker_answers = True

    def msg(self, topic: str, value: bytes, key: bytes | None, partition: int = 0) -> InMessage:
        self.offset += 1
        return InMessage(topic, partition, self.offset, key, value, [("trace", b"t-1")])

    def send(self, topic: str, events: list[dict[str, Any]], partition: int = 0) -> list[Any]:
        outs = []
        for e in events:
            data = self.codec.encode(topic, _avro_ready(self.codec, topic, e))
            out = self.p.on_input(self.msg(topic, data, e["account_id"].encode(), partition))
            if out is not None:
                outs.append(out)
        self.answer_log_end()
        return outs

    def answer_log_end(self) -> None:
        """The broker's log ends as of now: what was sent (nothing on other partitions).
        An ask goes after what made the worker ask: the clock moves on a microsecond, so
        "asked after the alert came" means what it says."""
        if self.broker_answers:
            self.clock.now += 1e-6
            empty = {(t, p): 0 for t in (TXN_TOPIC, SIG_TOPIC) for p in range(8)}
            inputs = self.p.inputs
            inputs.note_end_offsets({**empty, **inputs.read_to, **self.log_end}, self.clock.now)

    def settle(self, partitions: tuple[int, ...] = (0,)) -> list[Any]:
        """Brief due cases as the agent does after each batch; return the briefs."""
        self.answer_log_end()
        briefs = []
        for case_id, _partition in self.p.due_now(partitions):
            plan = self.p.plan_brief(case_id)
            if plan is not None:
                self.p.finalize_brief(plan)
                briefs.append(plan.brief)
        return briefs

    def count(self, name: str, **labels: str) -> float:
        self.p.count_consumed()  # as the worker does after each sub-batch
        return self.metrics.registry.get_sample_value(name, labels or None) or 0.0


def _avro_ready(codec: AvroCodec, topic: str, event: dict[str, Any]) -> dict[str, Any]:
    from streamproc.contracts.records import from_json

    return from_json(codec.schemas.for_topic(topic), event)


def _account(sc: Scenario, account: str) -> tuple[list[Any], list[Any], list[Any]]:
    pick = lambda evs: [e for e in evs if e["account_id"] == account]  # noqa: E731
    return pick(sc.transactions), pick(sc.signals), pick(sc.alerts)


@pytest.fixture()
def h(codec: AvroCodec) -> Harness:
    return Harness(codec)


def test_alert_is_briefed_once_after_the_settle_delay(h: Harness, scenario: Scenario) -> None:
    txns, sigs, alerts = _account(scenario, "acct-ct-001")
    assert h.send(TXN_TOPIC, txns) == [] and h.send(SIG_TOPIC, sigs) == []
    h.send(ALERT_TOPIC, alerts)
    assert h.count("streamproc_cases_opened_total") == 1
    assert h.settle() == []  # not due yet
    h.clock.now += SETTLE
    [brief] = h.settle()
    assert brief.case_id == "case-ct-001" and brief.brief_version == 1
    assert "CARD_TESTING" in brief.reason_codes
    assert h.tables["pending"] == {}
    h.clock.now += 60
    assert h.settle() == []
    assert h.count("streamproc_briefs_published_total", method="FALLBACK") == 1
    assert h.count("streamproc_brief_latency_seconds_count") == 1


def test_alerts_within_settle_are_briefed_together_and_later_ones_bump_version(
    h: Harness, scenario: Scenario
) -> None:
    txns, sigs, alerts = _account(scenario, "acct-ato-001")
    h.send(TXN_TOPIC, txns)
    h.send(SIG_TOPIC, sigs)
    twin = {**alerts[0], "event_id": "evt-twin", "alert_id": "alr-twin"}
    h.send(ALERT_TOPIC, [alerts[0], twin])
    h.clock.now += SETTLE
    [v1] = h.settle()
    assert sorted(v1.alert_ids) == sorted([alerts[0]["alert_id"], "alr-twin"])
    h.send(TXN_TOPIC, scenario.follow_up["transactions"])
    h.send(ALERT_TOPIC, scenario.follow_up["alerts"])
    h.clock.now += SETTLE
    [v2] = h.settle()
    assert v2.brief_version == 2 and len(v2.alert_ids) == 3 and v2.brief_id != v1.brief_id


def test_replayed_alert_is_a_duplicate_not_a_new_brief(h: Harness, scenario: Scenario) -> None:
    txns, _sigs, alerts = _account(scenario, "acct-benign-001")
    h.send(TXN_TOPIC, txns)
    h.send(ALERT_TOPIC, alerts)
    h.clock.now += SETTLE
    [first] = h.settle()
    h.send(TXN_TOPIC, txns)  # upstream redelivers everything
    h.send(ALERT_TOPIC, alerts)
    h.clock.now += SETTLE
    assert h.settle() == []
    assert h.count("streamproc_events_duplicate_total", topic=ALERT_TOPIC) == 1
    assert first.brief_version == 1


def test_a_replayed_alert_whose_pending_entry_was_lost_is_briefed(
    h: Harness, scenario: Scenario
) -> None:
    """kill -9 while a sub-batch's changelog records are in flight: the cases record
    (with the alert) was delivered, the pending record was not, so the sub-batch was not
    acknowledged. The next owner restores the case, reads the alert again, and must not
    take it for an already-handled duplicate: the case would never be briefed (the chaos
    suite lost an alert this way)."""
    txns, _sigs, alerts = _account(scenario, "acct-benign-001")
    h.send(TXN_TOPIC, txns)
    h.send(ALERT_TOPIC, alerts)
    h.tables["pending"].clear()  # its changelog record never reached the broker
    h.send(ALERT_TOPIC, alerts)  # the records of the unacknowledged sub-batch, again
    h.clock.now += SETTLE
    [brief] = h.settle()
    assert brief.alert_ids == [a["alert_id"] for a in alerts]
    h.send(ALERT_TOPIC, alerts)  # a later duplicate of a briefed alert: no new brief
    h.clock.now += SETTLE
    assert h.settle() == []


def test_crash_between_publish_and_finalize_rebriefs_with_same_id(
    h: Harness, scenario: Scenario
) -> None:
    txns, _sigs, alerts = _account(scenario, "acct-mule-001")
    h.send(TXN_TOPIC, txns)
    h.send(ALERT_TOPIC, alerts)
    h.clock.now += SETTLE + GRACE_S
    [tick] = h.p.due_ticks([0])
    out = h.p.tick_message(tick)
    plan = h.p.on_tick(h.msg(out.topic, out.value or b"", out.key))
    assert plan is not None  # published, then the worker died before finalize
    h.clock.now += 30
    [again] = h.settle()
    assert again.brief_id == plan.brief.brief_id and again.brief_version == plan.brief.brief_version


def test_ticks_only_for_active_partitions(h: Harness, scenario: Scenario) -> None:
    _, _, alerts = _account(scenario, "acct-benign-001")
    h.send(ALERT_TOPIC, [{**a, "transaction_ids": []} for a in alerts], partition=3)
    h.clock.now += SETTLE
    assert h.p.due_now([3]) == [("case-benign-001", 3)] and h.p.due_now([0]) == []
    assert h.p.due_ticks([3]) == []  # the busy agent gets a grace period before any tick
    h.clock.now += GRACE_S
    assert h.p.due_ticks([0, 1]) == []
    [tick] = h.p.due_ticks([3])
    assert tick.partition == 3 and h.p.tick_message(tick).partition == 3
    assert h.p.due_ticks([3]) == []  # not resent while the first tick is in flight
    h.clock.now += RESEND_S
    [again] = h.p.due_ticks([3])  # the tick was lost: sent again
    assert again == tick
    out = h.p.tick_message(again)
    plan = h.p.on_tick(h.msg(out.topic, out.value or b"", out.key, again.partition))
    assert plan is not None and plan.brief.case_id == "case-benign-001"
    h.p.finalize_brief(plan)
    h.clock.now += RESEND_S
    assert h.p.due_ticks([3]) == [] and h.p.due_now([3]) == []


@pytest.mark.parametrize("value", [b"junk", b"", b"\xc3\x01" + b"\0" * 8])
def test_bad_records_become_dead_letters_with_context(h: Harness, value: bytes) -> None:
    msg = h.msg(SIG_TOPIC, value, b"acct-1", partition=2)
    dlq = h.p.on_input(msg)
    assert dlq is not None
    headers = dict(dlq.headers)
    assert dlq.topic == "fraud.dlq.v1" and dlq.value == value and dlq.key == b"acct-1"
    assert headers["__connect.errors.topic"] == SIG_TOPIC.encode()
    assert headers["__connect.errors.partition"] == b"2"
    assert headers["__connect.errors.offset"] == str(msg.offset).encode()
    assert headers["__connect.errors.exception.class.name"] in (
        b"EventDecodeError",
        b"UnknownSchemaError",
    )
    assert headers["__connect.errors.exception.message"]
    assert headers["trace"] == b"t-1"  # original headers kept
    assert (
        sum(
            h.count("streamproc_events_rejected_total", topic=SIG_TOPIC, reason=r)
            for r in ("decode_error", "unknown_schema")
        )
        == 1
    )


def test_record_keyed_by_something_else_is_rejected(h: Harness, scenario: Scenario) -> None:
    e = scenario.transactions[0]
    data = h.codec.encode(TXN_TOPIC, _avro_ready(h.codec, TXN_TOPIC, e))
    dlq = h.p.on_input(h.msg(TXN_TOPIC, data, b"not-the-account"))
    assert dlq is not None
    assert dict(dlq.headers)["streamproc.errors.field"] == b"account_id"
    assert h.tables["windows"] == {}


def test_malformed_tick_is_ignored(h: Harness) -> None:
    assert h.p.on_tick(h.msg("streamproc-settle", b"{}", b"a")) is None
    assert (
        h.p.on_tick(h.msg("streamproc-settle", json.dumps({"case_id": "nope"}).encode(), b"a"))
        is None
    )


def test_decoded_state_is_normalized(h: Harness, scenario: Scenario) -> None:
    txns, _, _ = _account(scenario, "acct-ct-001")
    h.send(TXN_TOPIC, txns[:1])
    stored = next(iter(h.tables["windows"]["acct-ct-001"]["t"].values()))
    assert isinstance(stored["occurred_at"], int)
    assert stored == normalize(
        h.codec.schemas.for_topic(TXN_TOPIC),
        h.codec.decode(TXN_TOPIC, h.codec.encode(TXN_TOPIC, stored)),
    )


def test_brief_waits_for_a_named_transaction_that_arrives_late(
    h: Harness, scenario: Scenario
) -> None:
    txns, _sigs, alerts = _account(scenario, "acct-ct-001")
    named_last = next(t for t in txns if t["transaction_id"] == alerts[0]["transaction_ids"][-1])
    h.send(TXN_TOPIC, [t for t in txns if t is not named_last])
    h.send(ALERT_TOPIC, alerts)
    h.clock.now += SETTLE
    assert h.settle() == []  # the named transaction is missing: keep waiting
    assert h.tables["pending"]["case-ct-001"]["due"] > h.clock.now
    h.send(TXN_TOPIC, [named_last])
    h.clock.now += 1.0
    [brief] = h.settle()
    assert brief.counts.transactions == len(txns)
    assert not any("not received" in g for g in brief.data_gaps)


def test_brief_goes_out_with_a_data_gap_when_the_transaction_never_comes(
    h: Harness, scenario: Scenario
) -> None:
    txns, _, alerts = _account(scenario, "acct-benign-001")
    alert = {**alerts[0], "transaction_ids": [*alerts[0]["transaction_ids"], "txn-lost"]}
    h.send(TXN_TOPIC, txns)
    h.send(ALERT_TOPIC, [alert])
    waited = 0.0
    briefs: list[Any] = []
    while not briefs and waited < 120:
        h.clock.now += 1.0
        waited += 1.0
        briefs = h.settle()
    [brief] = briefs
    assert SETTLE + h.p.s.case_max_wait_s <= waited <= SETTLE + h.p.s.case_max_wait_s + 2
    assert any("txn-lost" in g for g in brief.data_gaps)


def test_briefed_cases_retire_after_retention_and_open_ones_do_not(
    h: Harness, scenario: Scenario
) -> None:
    _, _, benign = _account(scenario, "acct-benign-001")
    _, _, mule = _account(scenario, "acct-mule-001")
    h.send(ALERT_TOPIC, [{**a, "transaction_ids": []} for a in benign])
    h.clock.now += SETTLE
    [_] = h.settle()
    h.clock.now += h.p.s.case_retain_h * 3600 + 1
    h.send(ALERT_TOPIC, mule)  # opened now: pending, never retired
    ticks = h.p.due_ticks([0])
    retire = [t for t in ticks if t.op == "retire"]
    assert [t.key for t in retire] == ["case-benign-001"]
    for t in retire:
        out = h.p.tick_message(t)
        assert h.p.on_tick(h.msg(out.topic, out.value or b"", out.key)) is None
    assert "case-benign-001" not in h.tables["cases"] and "case-mule-001" in h.tables["cases"]
    assert h.count("streamproc_state_expired_total", table="cases") == 1


def test_windows_of_idle_accounts_expire(h: Harness, scenario: Scenario) -> None:
    txns, _, _ = _account(scenario, "acct-ct-001")
    other, _, _ = _account(scenario, "acct-benign-001")
    h.send(TXN_TOPIC, txns)
    h.clock.now += h.p.s.lookback_h * 3600 + 1
    h.send(TXN_TOPIC, other)  # touched now
    expire = [t for t in h.p.due_ticks([0]) if t.op == "expire"]
    assert [t.key for t in expire] == ["acct-ct-001"]
    out = h.p.tick_message(expire[0])
    h.p.on_tick(h.msg(out.topic, out.value or b"", out.key))
    assert set(h.tables["windows"]) == {"acct-benign-001"}
    assert h.count("streamproc_state_expired_total", table="windows") == 1
    assert h.p.due_ticks([0]) == []  # nothing more to do, nothing resent


def test_brief_waits_while_a_partition_of_the_case_is_behind_the_alert(
    h: Harness, scenario: Scenario
) -> None:
    """The alerts topic read ahead of device signals (a backlog, a restart): the case waits
    until the signals' partition reaches the alert's time or the log's end as the broker
    gave it after the alert came."""
    txns, sigs, alerts = _account(scenario, "acct-ato-001")
    h.send(TXN_TOPIC, txns)
    h.send(SIG_TOPIC, sigs[:-1])
    h.log_end[(SIG_TOPIC, 0)] = h.offset + 500  # the last signal and more, not processed yet
    h.send(ALERT_TOPIC, alerts)
    h.clock.now += SETTLE
    assert h.settle() == []  # behind the alert, records left: wait
    h.send(SIG_TOPIC, [sigs[-1]])  # the last signal, still before the alert time, arrives
    h.log_end[(SIG_TOPIC, 0)] = h.p.inputs.read_to[(SIG_TOPIC, 0)]  # and ends the log
    h.clock.now += 1.0
    [brief] = h.settle()
    assert brief.counts.device_signals == len(sigs)


def test_a_gated_case_is_released_as_soon_as_its_inputs_move(
    h: Harness, scenario: Scenario
) -> None:
    """The inputs gate is event-driven: once the lagging partition reaches the alert, the
    case is due at once, without the clock moving (it used to wait for a 1 s re-check)."""
    txns, sigs, alerts = _account(scenario, "acct-ato-001")
    h.send(TXN_TOPIC, txns)
    h.send(SIG_TOPIC, sigs[:-1])
    h.log_end[(SIG_TOPIC, 0)] = h.offset + 500  # more signals in the log than read
    h.send(ALERT_TOPIC, alerts)
    h.clock.now += SETTLE
    assert h.settle() == []
    [case_id] = h.p.gated
    assert h.p.wants_end_offsets  # the worker asks the broker now, not on its next timer
    assert h.p.recheck_gated({0}) == 0  # nothing moved: still held
    h.send(SIG_TOPIC, [sigs[-1]])
    h.log_end[(SIG_TOPIC, 0)] = h.p.inputs.read_to[(SIG_TOPIC, 0)]
    h.answer_log_end()
    assert h.p.recheck_gated({1}) == 0  # another partition moved: not this case's
    assert h.p.recheck_gated({0}) == 1 and h.p.gated == {}
    assert h.p.due_now([0]) == [(case_id, 0)]
    [brief] = h.settle()  # the clock has not moved since the case was held
    assert brief.counts.device_signals == len(sigs)


def test_a_log_end_asked_before_the_alert_came_does_not_count(
    h: Harness, scenario: Scenario
) -> None:
    """A watermark older than the alert may predate records published before the alert."""
    txns, sigs, alerts = _account(scenario, "acct-ato-001")
    h.send(TXN_TOPIC, txns)
    h.send(SIG_TOPIC, sigs[:-1])
    h.broker_answers = False  # the last answer was just before the alert
    h.clock.now += 0.5
    h.send(ALERT_TOPIC, alerts)
    h.clock.now += SETTLE
    assert h.settle() == []  # the only log end known is older than the alert
    h.send(SIG_TOPIC, [sigs[-1]])  # it was there: published before the alert
    h.broker_answers = True
    h.clock.now += 1.0
    [brief] = h.settle()
    assert brief.counts.device_signals == len(sigs)


def test_a_later_log_end_does_not_hold_back_a_case_the_first_one_releases(
    h: Harness, scenario: Scenario
) -> None:
    """Input kept coming after the alert while the worker lagged: each new answer is a
    larger log end. The case waits for the records there were when the alert came (the
    first answer asked after it), not for the newest answer; it used to chase the newest."""
    txns, sigs, alerts = _account(scenario, "acct-ato-001")
    h.send(TXN_TOPIC, txns)
    h.send(SIG_TOPIC, sigs[:-1])
    h.broker_answers = False
    h.send(ALERT_TOPIC, alerts)
    end_then = h.offset + 2  # the last signal gets the harness's next offset
    inputs_then = {(TXN_TOPIC, 0): h.p.inputs.read_to[(TXN_TOPIC, 0)], (SIG_TOPIC, 0): end_then}
    h.clock.now += 0.01
    h.p.inputs.note_end_offsets(inputs_then, h.clock.now)  # the last signal: there, not read yet
    h.clock.now += SETTLE
    assert h.settle() == [] and h.p.gated  # held: one signal before the alert unread
    for later in (100, 5_000):  # more answers, as published after the alert
        h.clock.now += 0.05
        h.p.inputs.note_end_offsets({**inputs_then, (SIG_TOPIC, 0): end_then + later}, h.clock.now)
        assert h.p.recheck_gated({0}) == 0
    h.send(SIG_TOPIC, [sigs[-1]])  # read up to where the log ended when the alert came
    assert h.p.inputs.read_to[(SIG_TOPIC, 0)] == end_then
    assert h.p.recheck_gated({0}) == 1
    [brief] = h.settle()
    assert brief.counts.device_signals == len(sigs)


def test_answers_kept_per_partition_are_bounded_and_in_asking_order(h: Harness) -> None:
    """Asks may overlap, so answers can come back out of order; a bounded number is kept."""
    key = (SIG_TOPIC, 0)
    for i in reversed(range(END_OFFSETS_KEPT + 10)):
        h.p.inputs.note_end_offsets({key: i}, float(i))
    answers = h.p.inputs.end_offsets[key]
    assert len(answers) == END_OFFSETS_KEPT
    assert answers == sorted(answers) and answers[-1] == (
        float(END_OFFSETS_KEPT + 9),
        END_OFFSETS_KEPT + 9,
    )


def test_a_stalled_input_delays_a_brief_by_at_most_the_max_wait(
    h: Harness, scenario: Scenario
) -> None:
    txns, _sigs, alerts = _account(scenario, "acct-ato-001")
    h.broker_answers = False  # no log end ever known: the inputs never count as caught up
    h.send(TXN_TOPIC, txns)
    h.send(ALERT_TOPIC, alerts)
    waited, briefs = 0.0, []
    while not briefs and waited < 120:
        h.clock.now += 1.0
        waited += 1.0
        briefs = h.settle()
    assert SETTLE + h.p.s.case_max_wait_s <= waited <= SETTLE + h.p.s.case_max_wait_s + 2


def test_a_case_taken_over_from_a_dead_worker_gets_its_whole_wait(
    h: Harness, scenario: Scenario, codec: AvroCodec
) -> None:
    """The case was pending long before this worker started (its "since" ran on while no
    worker was up): it must still wait for its inputs' backlog, not be briefed at once."""
    txns, sigs, alerts = _account(scenario, "acct-ato-001")
    h.send(TXN_TOPIC, txns)
    h.send(ALERT_TOPIC, alerts)
    h.clock.now += 600  # the worker died; another one starts on the restored tables
    nxt = Harness(codec)
    nxt.clock.now = h.clock.now
    for name, table in h.tables.items():
        nxt.tables[name].update(table)
    nxt.p.inputs.read_to = dict(h.p.inputs.read_to)
    nxt.log_end[(SIG_TOPIC, 0)] = 500  # the device signals' backlog, not read yet
    nxt.answer_log_end()
    assert nxt.settle() == []  # not briefed in haste
    nxt.send(SIG_TOPIC, sigs)
    nxt.log_end.clear()
    nxt.clock.now += 1.0
    [brief] = nxt.settle()
    assert brief.counts.device_signals == len(sigs)
