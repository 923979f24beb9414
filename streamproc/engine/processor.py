"""The case processor: what happens to each record, on plain mappings standing for tables.

faust tables are MutableMappings whose writes reach the changelog only on assignment,
so every change here is written back with `table[key] = value`. The same code runs on
dicts in unit tests.

Tables (every write happens while handling a record of the account's partition, which
keeps their changelogs co-partitioned with the inputs):
    windows  account_id → window (domain.window) + "wt" (wall time of last write), "p"
    cases    case_id → {"account_id", "partition", "alerts": {event_id: alert}, "version",
                        "last_brief_id", "retire_at", "briefs": {brief_id: provenance}}
    pending  case_id → {"account_id", "partition", "due", "since"}   (wall-clock seconds)
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

from murmurhash2 import murmurhash2

from streamproc.brief.fallback import build_brief
from streamproc.brief.model import CaseBrief
from streamproc.brief.pii import protect
from streamproc.config import Settings
from streamproc.contracts.codec import AvroCodec
from streamproc.contracts.records import check
from streamproc.domain.case import Case, assemble_case
from streamproc.domain.window import SIGNAL, TXN, AddOutcome, add_event, empty_window
from streamproc.engine import feedback, ticks
from streamproc.engine.dlq import Outgoing, Record, as_in_message, dead_letter
from streamproc.engine.inputs import InputProgress
from streamproc.engine.network import Network
from streamproc.errors import EventError, EventKeyError, EventValidationError
from streamproc.ops.metrics import Metrics
from streamproc.privacy.redact import Redactor

log = logging.getLogger(__name__)
Table = MutableMapping[str, Any]
LINKS_RECHECK_S = 0.25  # while waiting for the entity index's answers
RECHECK_S = 1.0  # while waiting for transactions an alert names; the inputs gate's fallback
MURMUR2_SEED = 0x9747B28C  # the Java client's (org.apache.kafka.common.utils.Utils.murmur2)
KEYS_REMEMBERED = 200_000  # keys whose partition was checked (then forgotten at once)


@dataclass(frozen=True)
class BriefPlan:
    """A brief ready to publish; `finalize_brief` records it once it is delivered."""

    case_id: str
    brief: CaseBrief
    output: Outgoing
    since: float
    partition: int
    case: Case
    # The deterministic brief before the brief PII policy masked it: what the model's
    # prompt is written from (redacted with the case's vault). A masked text hides a
    # device id from the vault's aliases, and shows part of the PII it may hold.
    floor: CaseBrief | None = None

    def with_brief(self, brief: CaseBrief, codec: AvroCodec, topic: str) -> BriefPlan:
        """The same plan publishing another brief of the same case (the model's)."""
        output = Outgoing(
            topic, self.output.key, codec.encode(topic, brief.to_avro()), _brief_headers(brief)
        )
        return BriefPlan(
            self.case_id, brief, output, self.since, self.partition, self.case, self.floor
        )


def check_key(
    key: bytes | None, partition: int, partitions: int | None, seen: dict[bytes, int] | None = None
) -> None:
    """An input record is keyed, and sits where its key's murmur2 hash puts it (Kafka's
    default partitioner): another partitioner would split an account between workers,
    each briefing half of its history. `seen` remembers keys already checked."""
    if key is None:
        raise EventKeyError(
            "record has no key (inputs are keyed by account_id)", reason="missing_key"
        )
    if partitions is None or (seen is not None and seen.get(key) == partition):
        return
    expected = (murmurhash2(key, MURMUR2_SEED) & 0x7FFFFFFF) % partitions
    if expected != partition:
        raise EventKeyError(
            f"record is on partition {partition}, its key's is {expected} (murmur2): "
            "the producer does not use Kafka's default partitioner",
            reason="wrong_partition",
        )
    if seen is not None:
        if len(seen) >= KEYS_REMEMBERED:
            seen.clear()
        seen[key] = partition


def _brief_headers(brief: CaseBrief) -> list[tuple[str, bytes]]:
    return [
        ("brief_id", brief.brief_id.encode()),
        ("method", brief.generation.method.value.encode()),
    ]


class CaseProcessor:
    def __init__(
        self,
        settings: Settings,
        codec: AvroCodec,
        metrics: Metrics,
        windows: Table,
        cases: Table,
        pending: Table,
        clock: Callable[[], float] = time.time,
        committed: Callable[[str, int], int | None] = lambda _topic, _partition: None,
        partitions: int | None = None,
        network: Network | None = None,
    ) -> None:
        self.s = settings
        self.network = network  # linked accounts (engine/network.py); None: off
        self.partitions = partitions  # the inputs' count: a record must sit on its key's
        self._keys_checked: dict[bytes, int] = {}
        self.topics = settings.topics
        self.codec = codec
        self.redactor = Redactor.for_inputs(codec.schemas, settings.topics)
        self.metrics = metrics
        self.windows, self.cases, self.pending = windows, cases, pending
        self.clock = clock
        self.lookback_ms = int(settings.lookback_h * 3600 * 1000)
        self.after_ms = int(settings.case_after_s * 1000)
        self._kinds = {self.topics.transactions: TXN, self.topics.device_signals: SIGNAL}
        # The topic names a record is told apart by, as plain attributes (read per record).
        self._network_topics = (
            frozenset((self.topics.entity_index, self.topics.entity_links))
            if network is not None
            else frozenset()
        )
        self._feedback_topic, self._alerts_topic = self.topics.feedback, self.topics.alerts
        self._transactions_topic = self.topics.transactions
        self._schemas = {topic: codec.schemas.for_topic(topic) for topic in self.topics.inputs}
        self._scheduler = ticks.TickScheduler()
        self._last_sweep = 0.0
        self._consumed_children: dict[str, Any] = {}
        self._consumed_n: dict[str, int] = {}  # records since `count_consumed`, by topic
        self.inputs = InputProgress(self.topics.events, clock, committed)
        # Cases due but held back because an input partition is behind the alert:
        # case_id → (partition, alert event time, since). `recheck_gated` releases them as
        # soon as their inputs move (records processed, log-end offsets answered), not
        # on a timer; `wants_end_offsets` tells the worker to ask the broker now.
        self.gated: dict[str, tuple[int, int, float]] = {}
        self.released: set[str] = set()
        self.wants_end_offsets = False
        # When this worker began waiting on each pending case. A case taken over from a
        # worker that died gets its whole wait here: its "since" kept running meanwhile.
        self._wait_from: dict[str, float] = {}

    def count_consumed(self) -> None:
        """The records counted since the last call go to the metrics (the worker calls it
        once per sub-batch: a Prometheus increment per record takes a lock, and cost 2%
        of ingest)."""
        for topic, n in self._consumed_n.items():
            child = self._consumed_children.get(topic)
            if child is None:
                child = self._consumed_children[topic] = self.metrics.events_consumed.labels(topic)
            child.inc(n)
        self._consumed_n.clear()
        if self.network is not None:
            self.network.count_messages()

    # -- input records ---------------------------------------------------------------

    def on_input(self, msg: Record) -> Outgoing | None:
        """Decode, check and apply one input record; a bad record becomes a DLQ record.

        `msg` is an InMessage or the consumer's own record (same attribute names): the
        worker hands over what it fetched without copying it."""
        topic, partition = msg.topic, msg.partition
        consumed = self._consumed_n
        consumed[topic] = consumed.get(topic, 0) + 1
        if topic in self._network_topics:
            return self._on_network(msg)
        key, inputs = (topic, partition), self.inputs
        inputs.read_to[key] = msg.offset + 1
        try:
            record = self._decode(msg)
        except EventError as exc:
            self.metrics.events_rejected.labels(topic, exc.reason).inc()
            return dead_letter(self.topics.dlq, as_in_message(msg), exc, stage="decode")
        if topic == self._feedback_topic:  # an analyst's decision: no event time, no window
            case = self.cases.get(record["case_id"])
            feedback.observe(self.metrics, record, feedback.provenance(case, record["brief_id"]))
            if self.network is not None:  # it travels to the entities of its case
                self.network.on_decision(record, case)
            return None
        if record["occurred_at"] > inputs.stream_time.get(key, 0):
            inputs.stream_time[key] = record["occurred_at"]
        if topic == self._alerts_topic:
            self._on_alert(record, partition)
        else:
            self._on_event(topic, record, partition)
        return None

    def _decode(self, msg: Record) -> dict[str, Any]:
        check_key(msg.key, msg.partition, self.partitions, self._keys_checked)
        record = self.codec.decode_millis(msg.topic, msg.value)
        check(self._schemas[msg.topic], record)
        if msg.key is not None and msg.key != record["account_id"].encode():
            raise EventValidationError(
                "record key is not its account_id (inputs must be keyed by account_id)",
                field="account_id",
            )
        return record

    def _on_network(self, msg: Record) -> Outgoing | None:
        """An entity index message (this worker owns the entity) or an answer (it owns
        the case that asked)."""
        assert self.network is not None
        try:
            if msg.value is None:
                raise ValueError("no value")
            if msg.topic == self.topics.entity_index:
                self.network.on_index(msg.value)
                return None
            case_id = self.network.on_answer(msg.value, self.cases)
        except (ValueError, KeyError, TypeError) as exc:
            error = EventValidationError(f"malformed entity index record: {exc!r}"[:200])
            self.metrics.events_rejected.labels(msg.topic, error.reason).inc()
            return dead_letter(self.topics.dlq, as_in_message(msg), error, stage="decode")
        if case_id is not None and case_id in self.pending:
            self.released.add(case_id)  # its answers are in: due now
        return None

    def _on_event(self, topic: str, record: dict[str, Any], partition: int) -> None:
        account = record["account_id"]
        window = self.windows.get(account) or empty_window()
        outcome = add_event(
            window,
            self._kinds[topic],
            record,
            lookback_ms=self.lookback_ms,
            max_events=self.s.max_events_per_account,
        )
        if outcome is AddOutcome.ADDED:
            window["wt"], window["p"] = self.clock(), partition
            self.windows[account] = window
            if self.network is not None and (
                record.get("device_id")
                or record.get("ip_address")
                or record.get("card_pan")
                or record.get("counterparty_iban")
            ):  # (most payments carry none of them: not a call each)
                kind = "transaction" if topic == self._transactions_topic else "signal"
                self.network.observe(kind, record, window.get("fam"), window.get("fam_at"))
        elif outcome is AddOutcome.DUPLICATE:
            self.metrics.events_duplicate.labels(topic).inc()
        else:
            self.metrics.events_expired.labels(topic).inc()

    def _on_alert(self, alert: dict[str, Any], partition: int) -> None:
        case_id, account = alert["case_id"], alert["account_id"]
        case = self.cases.get(case_id)
        if case is None:
            case = {
                "account_id": account,
                "partition": partition,
                "alerts": {},
                "version": 0,
                "last_brief_id": None,
                "retire_at": None,
            }
            self.metrics.cases_opened.inc()
        if alert["event_id"] in case["alerts"]:
            self.metrics.events_duplicate.labels(self.topics.alerts).inc()
            if case_id not in self.pending:
                # Read again after a crash: its case's state may have reached the
                # changelog without its pending entry (a sub-batch's records are not
                # delivered atomically, and it was not acknowledged). Pending again, it
                # is briefed, or found unchanged since its last brief and let go.
                self._make_pending(case_id, case["account_id"], partition, self.s.case_settle_s)
            return
        if case["account_id"] != account:
            log.warning("alert joins a case opened on another account; kept on the first")
        case["alerts"][alert["event_id"]] = alert
        case["retire_at"] = None  # an open case is never retired
        if self.network is not None:
            self._alert_entities(case, alert, partition)
        self.cases[case_id] = case
        if case_id not in self.pending:
            self._make_pending(case_id, case["account_id"], partition, self.s.case_settle_s)

    def _alert_entities(self, case: dict[str, Any], alert: dict[str, Any], partition: int) -> None:
        """The alert's own entities (email, phone) are sighted; its surname's keyed hash
        goes to the case and the account's window, whose entities are sighted again with
        it the first time it is known (households are context, not rings)."""
        assert self.network is not None
        family = self.network.family_of(alert.get("customer_name"))
        account, at = alert["account_id"], alert["occurred_at"]
        window = self.windows.get(account)
        if family is not None:
            if window is None or window.get("fam") != family or window.get("fam_at", at) > at:
                window = window or empty_window()
                window["fam"], window["fam_at"] = family, min(at, window.get("fam_at", at))
                window["wt"], window["p"] = self.clock(), partition
                self.windows[account] = window
                self.network.resight(
                    [("transaction", t) for t in window[TXN].values()]
                    + [("signal", s) for s in window[SIGNAL].values()],
                    family,
                    window["fam_at"],
                )
            case["family"], case["family_at"] = family, window.get("fam_at", at)
        known = window or {}
        self.network.observe("alert", alert, family or known.get("fam"), known.get("fam_at"))

    def _make_pending(self, case_id: str, account: str, partition: int, due_in: float) -> None:
        """Pend a case for a brief due in `due_in` seconds; its wait starts now."""
        now = self.clock()
        self._wait_from[case_id] = now
        self.pending[case_id] = {
            "account_id": account,
            "partition": partition,
            "due": now + due_in,
            "since": now,
        }

    def _unpend(self, case_id: str) -> None:
        self.pending.pop(case_id, None)
        self._wait_from.pop(case_id, None)
        self.gated.pop(case_id, None)
        self.released.discard(case_id)

    # -- ticks -----------------------------------------------------------------------

    def due_ticks(self, active_partitions: Iterable[int]) -> list[ticks.Tick]:
        """Briefs due on our partitions, plus retire/expire work once per sweep interval."""
        now, active = self.clock(), set(active_partitions)
        due = self._scheduler.briefs(self.pending, active, now)
        if now - self._last_sweep >= self.s.state_sweep_interval_s:
            self._last_sweep = now
            for case_id in [c for c in self._wait_from if c not in self.pending]:
                del self._wait_from[case_id]  # briefed elsewhere after a rebalance
            for case_id in [c for c in self.gated if c not in self.pending]:
                del self.gated[case_id]
            self.released &= set(self.pending)
            if self.network is not None:
                self.network.forget(self.pending.__contains__)
            due += self._scheduler.sweep(
                self.cases, self.windows, active, now, self.s.lookback_h * 3600
            )
        return due

    def due_now(self, active_partitions: Iterable[int]) -> list[tuple[str, int]]:
        """(case_id, partition) of pending cases due now: the agent briefs them in line."""
        now, active = self.clock(), set(active_partitions)
        released = self.released
        return [
            (case_id, p["partition"])
            for case_id, p in list(self.pending.items())
            if (p["due"] <= now or case_id in released) and p["partition"] in active
        ]

    def tick_message(self, tick: ticks.Tick) -> Outgoing:
        return tick.message(self.topics.settle)

    def on_tick(self, msg: Record) -> BriefPlan | None:
        """Act on a tick: retire or expire state, or plan a brief to publish."""
        parsed = ticks.parse(msg)
        if parsed is None:
            log.error(
                "malformed settle tick ignored (partition %d offset %d)", msg.partition, msg.offset
            )
            return None
        op, key = parsed
        if op is ticks.Op.RETIRE:
            self._retire(key)
            return None
        if op is ticks.Op.EXPIRE:
            self._expire(key)
            return None
        return self.plan_brief(key)

    def _retire(self, case_id: str) -> None:
        case = self.cases.get(case_id)
        at = case.get("retire_at") if case else None
        if (
            case is not None
            and at is not None
            and at <= self.clock()
            and case_id not in self.pending
        ):
            del self.cases[case_id]
            self.metrics.state_expired.labels("cases").inc()

    def _expire(self, account: str) -> None:
        window = self.windows.get(account)
        if window is not None and self.clock() - window.get("wt", 0.0) > self.s.lookback_h * 3600:
            del self.windows[account]
            self.metrics.state_expired.labels("windows").inc()

    def plan_brief(self, case_id: str) -> BriefPlan | None:
        """The brief to publish for a due case, or None (not due, gone, waiting, unchanged)."""
        pend, case = self.pending.get(case_id), self.cases.get(case_id)
        now = self.clock()
        released = case_id in self.released
        self.released.discard(case_id)
        if pend is not None and case is None:  # its state is gone (the worker logged why)
            self._unpend(case_id)
            return None
        if pend is None or case is None or (pend["due"] > now and not released):
            return None
        window = self.windows.get(case["account_id"]) or empty_window()
        assembled = assemble_case(
            case_id,
            case["account_id"],
            case["alerts"].values(),
            window,
            lookback_ms=self.lookback_ms,
            after_ms=self.after_ms,
            alerts_trimmed=case.get("alerts_trimmed", 0),
            alerts_dropped=case.get("alerts_dropped", 0),
        )
        if self._should_wait(case_id, assembled, pend, now):
            self.pending[case_id] = {**pend, "due": now + RECHECK_S}
            alert_ms = assembled.alerts[-1]["occurred_at"]
            if not assembled.missing_transaction_ids:  # held by the inputs gate alone
                self.gated[case_id] = (pend["partition"], alert_ms, pend["since"])
                self.wants_end_offsets = True
            return None
        self.gated.pop(case_id, None)
        if self.network is not None:
            links = self.network.links_for(case, assembled, pend["partition"])
            self.cases[case_id] = case  # its asks, and the entities its decision goes to
            if links.waiting:  # an answer releases it (`_on_network`); else the wait ends
                self.pending[case_id] = {**pend, "due": now + min(RECHECK_S, LINKS_RECHECK_S)}
                return None
            assembled = dataclasses.replace(
                assembled,
                links=links.answers,
                family=case.get("family"),
                data_gaps=assembled.data_gaps + links.gaps,
            )
        if assembled.brief_id() == case["last_brief_id"]:
            self._unpend(case_id)
            self.metrics.briefs_unchanged.inc()
            return None
        failed: list[str] = []
        brief = build_brief(
            assembled, version=case["version"] + 1, generated_at_ms=int(now * 1000), failed=failed
        )
        for detector in failed:
            self.metrics.detector_failures.labels(detector).inc()
        floor = brief
        brief = protect(brief, assembled, self.redactor, self.s.brief_pii)
        value = self.codec.encode(self.topics.briefs, brief.to_avro())
        out = Outgoing(self.topics.briefs, case_id.encode(), value, _brief_headers(brief))
        return BriefPlan(case_id, brief, out, pend["since"], pend["partition"], assembled, floor)

    def _should_wait(self, case_id: str, case: Case, pend: dict[str, Any], now: float) -> bool:
        """Wait, up to CASE_MAX_WAIT_S past the settle delay, for transactions the alert
        names, and while an input partition of the case is behind the alert: it has records
        left to read and has not yet reached the alert's event time (after a restart or
        under a backlog, the alerts topic is often read ahead of the others). The wait is
        counted from when this worker took the case on, so a case pending when its worker
        died is not briefed in haste by the next one, before it has read its backlog."""
        started = self._wait_from.setdefault(case_id, now - self.s.case_settle_s)
        partition, alert_ms = pend["partition"], case.alerts[-1]["occurred_at"]
        behind = self.inputs.behind(partition, alert_ms, pend["since"])
        if now < started + self.s.case_settle_s + self.s.case_max_wait_s:
            return bool(case.missing_transaction_ids) or behind
        if behind:  # briefed anyway: say how far behind, for whoever reads the brief's gaps
            log.warning(
                "case briefed after the longest wait while an input was still behind",
                extra={
                    "case_id": case_id,
                    "waited_s": round(now - started, 1),
                    "inputs": self.inputs.report(partition, alert_ms),
                },
            )
        return False

    def recheck_gated(self, partitions: set[int] | None = None) -> int:
        """Make due now the gated cases on `partitions` (all when None) whose inputs have
        reached their alert; returns how many. Called when inputs move, so a case waits
        for its inputs, not for a timer."""
        now, released = self.clock(), 0
        for case_id, (partition, alert_ms, since) in list(self.gated.items()):
            if partitions is not None and partition not in partitions:
                continue
            pend = self.pending.get(case_id)
            if pend is None:  # briefed, or moved to another worker
                del self.gated[case_id]
            elif not self.inputs.behind(partition, alert_ms, since):
                del self.gated[case_id]
                if pend["due"] > now:  # kept in memory: no table write outside a record
                    self.released.add(case_id)
                released += 1
        return released

    def partitions_waiting(self, active_partitions: Iterable[int]) -> set[int]:
        """Our partitions with a case pending: their inputs' log-end offsets are wanted."""
        active = set(active_partitions)
        return {p["partition"] for p in self.pending.values() if p["partition"] in active}

    def finalize_brief(self, plan: BriefPlan) -> None:
        """Record a delivered brief: the case is no longer pending, its version moves on."""
        case = self.cases[plan.case_id]
        case["version"] = plan.brief.brief_version
        case["last_brief_id"] = plan.brief.brief_id
        case["partition"] = plan.partition
        case["retire_at"] = self.clock() + self.s.case_retain_h * 3600
        feedback.remember(case, plan.brief)  # what analysts' feedback is joined with
        self.cases[plan.case_id] = case
        briefed = {a["event_id"] for a in plan.case.alerts}
        if set(case["alerts"]) - briefed:  # an alert came while this brief was being written
            self._make_pending(plan.case_id, case["account_id"], plan.partition, 0.0)
        else:
            self._unpend(plan.case_id)
        latency_s = max(0.0, self.clock() - plan.since)
        gen = plan.brief.generation
        self.metrics.briefs_published.labels(gen.method.value).inc()
        self.metrics.brief_latency.observe(latency_s)
        log.info(
            "brief published",
            extra={
                "case_id": plan.case_id,
                "brief_id": plan.brief.brief_id,
                "brief_version": plan.brief.brief_version,
                "method": gen.method.value,
                "fallback_reason": gen.fallback_reason,
                "risk_level": plan.brief.risk_level.value,
                "latency_ms": round(latency_s * 1000),
            },
        )

    def observe_state(self) -> None:
        self.metrics.state_size.labels("windows").set(len(self.windows))
        self.metrics.state_size.labels("cases").set(len(self.cases))
        self.metrics.state_size.labels("pending").set(len(self.pending))
        if self.network is not None:
            self.metrics.state_size.labels("entities").set(len(self.network.entities))
        self.metrics.cases_pending.set(len(self.pending))
