"""The case processor: what happens to each record, on plain mappings standing for tables.

faust tables are MutableMappings whose writes go to a changelog only on assignment,
so every change here is written back with `table[key] = value`. The same code runs
on dicts in unit tests.

Tables (all keyed so that writes happen while handling a record of the account's
partition, which keeps their changelogs co-partitioned with the inputs):
    windows  account_id → window (domain.window)
    cases    case_id → {"account_id", "alerts": {event_id: alert}, "version", "last_brief_id"}
    pending  case_id → {"account_id", "partition", "due", "since"}   (wall-clock seconds)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

from streamproc.brief.fallback import build_brief
from streamproc.brief.model import CaseBrief
from streamproc.config import Settings
from streamproc.contracts.codec import AvroCodec
from streamproc.contracts.records import normalize
from streamproc.domain.case import assemble_case
from streamproc.domain.window import SIGNAL, TXN, AddOutcome, add_event, empty_window
from streamproc.engine.dlq import InMessage, Outgoing, dead_letter
from streamproc.errors import EventError, EventValidationError
from streamproc.ops.metrics import Metrics

log = logging.getLogger(__name__)
Table = MutableMapping[str, Any]
TICK_RESEND_S = 10.0


@dataclass(frozen=True)
class BriefPlan:
    """A brief ready to publish; `finalize_brief` records it once it is delivered."""

    case_id: str
    brief: CaseBrief
    output: Outgoing
    since: float


@dataclass(frozen=True)
class Tick:
    case_id: str
    account_id: str
    partition: int


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
    ) -> None:
        self.s = settings
        self.topics = settings.topics
        self.codec = codec
        self.metrics = metrics
        self.windows, self.cases, self.pending = windows, cases, pending
        self.clock = clock
        self.lookback_ms = int(settings.lookback_h * 3600 * 1000)
        self.after_ms = int(settings.case_after_s * 1000)
        self._kinds = {self.topics.transactions: TXN, self.topics.device_signals: SIGNAL}
        self._ticked: dict[tuple[str, float], float] = {}
        self._consumed_children: dict[str, Any] = {}

    def _consumed(self, topic: str) -> Any:
        """The labelled counter child, cached: `labels()` costs more than the increment."""
        child = self._consumed_children.get(topic)
        if child is None:
            child = self._consumed_children[topic] = self.metrics.events_consumed.labels(topic)
        return child

    # -- input records ---------------------------------------------------------------

    def on_input(self, msg: InMessage) -> list[Outgoing]:
        """Decode, check and apply one input record; a bad record becomes a DLQ record."""
        self._consumed(msg.topic).inc()
        try:
            record = self._decode(msg)
        except EventError as exc:
            self.metrics.events_rejected.labels(msg.topic, exc.reason).inc()
            return [dead_letter(self.topics.dlq, msg, exc, stage="decode")]
        if msg.topic == self.topics.alerts:
            self._on_alert(record, msg.partition)
        else:
            self._on_event(msg.topic, record)
        return []

    def _decode(self, msg: InMessage) -> dict[str, Any]:
        schema = self.codec.schemas.for_topic(msg.topic)
        record = normalize(schema, self.codec.decode(msg.topic, msg.value))
        if msg.key is not None and msg.key != record["account_id"].encode():
            raise EventValidationError(
                "record key is not its account_id (inputs must be keyed by account_id)",
                field="account_id",
            )
        return record

    def _on_event(self, topic: str, record: dict[str, Any]) -> None:
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
            self.windows[account] = window
        elif outcome is AddOutcome.DUPLICATE:
            self.metrics.events_duplicate.labels(topic).inc()
        else:
            self.metrics.events_expired.labels(topic).inc()

    def _on_alert(self, alert: dict[str, Any], partition: int) -> None:
        case_id, account = alert["case_id"], alert["account_id"]
        case = self.cases.get(case_id)
        if case is None:
            case = {"account_id": account, "alerts": {}, "version": 0, "last_brief_id": None}
            self.metrics.cases_opened.inc()
        if alert["event_id"] in case["alerts"]:
            self.metrics.events_duplicate.labels(self.topics.alerts).inc()
            return
        if case["account_id"] != account:
            log.warning(
                "alert joins a case opened on another account; kept on the first account",
                extra={"case_id": case_id},
            )
        case["alerts"][alert["event_id"]] = alert
        self.cases[case_id] = case
        if case_id not in self.pending:
            now = self.clock()
            self.pending[case_id] = {
                "account_id": case["account_id"],
                "partition": partition,
                "due": now + self.s.case_settle_s,
                "since": now,
            }

    # -- settle ticks ------------------------------------------------------------------

    def due_ticks(self, active_partitions: Iterable[int]) -> list[Tick]:
        """Cases on our partitions whose settle delay is over (resent if no brief follows)."""
        now, active = self.clock(), set(active_partitions)
        ticks, live = [], set()
        for case_id, p in list(self.pending.items()):
            key = (case_id, p["since"])  # a new pending cycle of the case is ticked afresh
            live.add(key)
            due = p["partition"] in active and p["due"] <= now
            if due and now - self._ticked.get(key, 0.0) >= TICK_RESEND_S:
                self._ticked[key] = now
                ticks.append(Tick(case_id, p["account_id"], p["partition"]))
        for key in self._ticked.keys() - live:
            del self._ticked[key]
        return ticks

    def tick_message(self, tick: Tick) -> Outgoing:
        return Outgoing(
            self.topics.settle,
            tick.account_id.encode(),
            json.dumps({"case_id": tick.case_id}).encode(),
            partition=tick.partition,
        )

    def prepare_brief(self, msg: InMessage) -> BriefPlan | None:
        """For a settle tick: the brief to publish, or None (not due, gone, or unchanged)."""
        try:
            case_id = str(json.loads(msg.value or b"")["case_id"])
        except (ValueError, KeyError, TypeError):
            log.error("malformed settle tick ignored", extra={"offset": msg.offset})
            return None
        pend, case = self.pending.get(case_id), self.cases.get(case_id)
        if pend is None or case is None or pend["due"] > self.clock():
            return None
        window = self.windows.get(case["account_id"]) or empty_window()
        assembled = assemble_case(
            case_id,
            case["account_id"],
            case["alerts"].values(),
            window,
            lookback_ms=self.lookback_ms,
            after_ms=self.after_ms,
        )
        if assembled.brief_id() == case["last_brief_id"]:
            del self.pending[case_id]
            self.metrics.briefs_unchanged.inc()
            return None
        brief = build_brief(
            assembled, version=case["version"] + 1, generated_at_ms=int(self.clock() * 1000)
        )
        value = self.codec.encode(self.topics.briefs, brief.to_avro())
        out = Outgoing(
            self.topics.briefs,
            case_id.encode(),
            value,
            [
                ("brief_id", brief.brief_id.encode()),
                ("method", brief.generation.method.value.encode()),
            ],
        )
        return BriefPlan(case_id, brief, out, pend["since"])

    def finalize_brief(self, plan: BriefPlan) -> None:
        """Record a delivered brief: the case is no longer pending, its version moves on."""
        case = self.cases[plan.case_id]
        case["version"] = plan.brief.brief_version
        case["last_brief_id"] = plan.brief.brief_id
        self.cases[plan.case_id] = case
        self.pending.pop(plan.case_id, None)
        self.metrics.briefs_published.labels(plan.brief.generation.method.value).inc()
        self.metrics.brief_latency.observe(max(0.0, self.clock() - plan.since))

    def observe_state(self) -> None:
        self.metrics.state_size.labels("windows").set(len(self.windows))
        self.metrics.state_size.labels("cases").set(len(self.cases))
        self.metrics.state_size.labels("pending").set(len(self.pending))
        self.metrics.cases_pending.set(len(self.pending))
