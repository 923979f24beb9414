"""The worker: faust's group membership, tables and recovery around our batch path.

Input records reach `CaseWorker.handle` in sub-batches straight from the consumer
(internals.BatchConsumer), not through faust's per-message path. A record that fails
goes to the DLQ with the reason; nothing escapes a sub-batch. Table writes carry the
partition of the record (or case) that caused them, so changelogs stay co-partitioned
with the inputs, whoever writes them: a sub-batch, a model task, or a timer. When its
outputs and state are durable the sub-batch is acknowledged (engine/checkpoint.py).
Nothing is briefed or written while the worker rebalances or restores (`serving`).
Operations (health, lag, HTTP, the process) live in streamproc/ops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from faust.types import TP

from streamproc.config import Settings
from streamproc.contracts.codec import AvroCodec
from streamproc.engine import internals
from streamproc.engine import processor as processor_mod
from streamproc.engine.checkpoint import Checkpoint
from streamproc.engine.dlq import InMessage, Outgoing, as_in_message, dead_letter
from streamproc.engine.gate import LogEndAsker
from streamproc.engine.llm_stage import llm_stage
from streamproc.engine.network import Network
from streamproc.engine.processor import BriefPlan, CaseProcessor
from streamproc.engine.state import ConfluentChangelog
from streamproc.engine.tables import faust_app, state_tables
from streamproc.kafka.clients import producer_config
from streamproc.network.entities import EntityHasher
from streamproc.ops.health import Health, Snapshot, broker_reachable, registry_answers
from streamproc.ops.lag import consumer_lag
from streamproc.ops.metrics import Metrics
from streamproc.ops.process import GarbageCollection, die

log = logging.getLogger(__name__)
TIMER_INTERVAL_S = 0.1
BROKER_PROBE_INTERVAL_S = 5.0
LAG_INTERVAL_S = 2.0
ASK_GRACE_S = 1.0  # at shutdown, for the inputs gate's ask out


class CaseWorker:
    """One worker: fetched records → state → due cases briefed → changelog → acks.

    Read it in this order:
      `handle`           a sub-batch of input records, from internals.BatchConsumer;
                         each record: the processor applies it, a bad one is dead-
                         lettered (its delivery joined to the sub-batch's checkpoint),
                         one that raised goes to `_failed`;
        `brief_due_cases` cases due now are briefed in line (or offered to the model);
        `checkpoint.close_sub_batch` state written; its future acks the offsets.
      `publish`          a brief is delivered, then recorded as briefed.
      `serving`/`owns`   what the LLM stage asks before it writes.
      the timers         settle ticks, the inputs gate's asks (engine/gate.py), lag,
                         readiness, the broker and registry probes.
      the rebalance      cases waiting for a model slot handed back; calls whose partitions
                         moved abandoned; at shutdown, model calls drained.
    """

    def __init__(
        self,
        settings: Settings,
        codec: AvroCodec,
        metrics: Metrics,
        partitions: int,
        replication: int,
    ) -> None:
        internals.check()
        self.s, self.metrics, self.topics, self.codec = settings, metrics, settings.topics, codec
        self.partitions = partitions
        t = self.topics
        # internals.BatchSink: the order a fetch's records are handled. Alerts first: a
        # case held by the inputs gate asks for log-end offsets while the transactions
        # and signals fetched with it are handled (at 26,000 events/s, p99 210-518 ms
        # with alerts last, 223-231 ms first). The gate, not this order, makes a brief
        # wait for its inputs.
        self.input_topics: tuple[str, ...] = (
            t.alerts,
            t.transactions,
            t.device_signals,
            t.feedback,
            t.settle,
        )
        key = settings.entity_key_value()
        if key is not None:  # linked accounts: the entity index's topics are read too
            self.input_topics += (t.entity_index, t.entity_links)
        self.health = Health()
        self.records_handled = 0  # input records handed to `handle` (readiness)
        self._serving = False  # started; `serving` says when writes may happen
        self.app = faust_app(settings, partitions, replication)
        self.changelog = ConfluentChangelog(producer_config(settings), on_offset=self._delivered)
        self.checkpoint = Checkpoint(self.changelog, self._write_tables, self.undeliverable)
        internals.install(self.app, settings.broker_fetch_max_wait_ms, sink=self)
        self.tables, stores = state_tables(
            self.app, self.changelog, metrics, partitions, on_trim=self._trimmed
        )
        self._stores = {self.tables[name].topic: store for name, store in stores.items()}
        self.network = (
            None
            if key is None
            else Network(
                settings,
                EntityHasher(key),
                metrics,
                self.tables["entities"],
                self.changelog.produce,
                partitions,
                owns=self._owns_now,
            )
        )
        self.processor = CaseProcessor(
            settings,
            codec,
            metrics,
            self.tables["windows"],
            self.tables["cases"],
            self.tables["pending"],
            committed=self._committed,
            partitions=partitions,
            network=self.network,
        )
        cache = self.tables["llm_cache"]
        self.stage = llm_stage(
            settings, codec, metrics, cache, self.publish, self.send, self.persist, owner=self
        )
        # Subscribed through the conductor; its records reach `handle`, not an agent.
        self.app.topics.add(
            self.app.topic(
                *self.input_topics,
                key_type=bytes,
                value_type=bytes,
                key_serializer="raw",
                value_serializer="raw",
            )
        )
        self._partition = -1  # the tables' changelog partition for the writes at hand
        # The input partitions assigned, as of the last assignment (empty while revoked):
        # the entity index asks it per message, too often to ask the assignor each time.
        self._owned: frozenset[int] = frozenset()
        self._entities_swept = time.monotonic()
        self._publishing: set[str] = set()  # cases whose brief is being delivered
        self.asker = LogEndAsker(
            self.app,
            self.processor,
            t.events,
            self._active_partitions,
            self.serving,
            self._released,
        )
        self.gc = GarbageCollection()
        self._register_timers()

    # -- from fetch to brief ------------------------------------------------------------

    async def handle(self, records: list[Any]) -> asyncio.Future[None]:
        """Apply a sub-batch of records, brief the cases now due, write the changelog;
        returns the future of its dead letters' and state's delivery (the offsets are
        acked after it: engine/checkpoint.py)."""
        self.records_handled += len(records)
        if self.codec.registry is not None:  # ids the batch needs, fetched off the loop
            unresolved = self.codec.unresolved_ids(r.value for r in records)
            if unresolved and (await self.codec.resolve_ids(unresolved))[1]:
                self.health.registry_ok = False  # those records go to the DLQ, with why
        try:
            return await self._handle(records)
        finally:  # counted even when the sub-batch raised
            self.processor.count_consumed()

    async def _handle(self, records: list[Any]) -> asyncio.Future[None]:
        moved: set[int] = set()
        settle, on_input = self.topics.settle, self.processor.on_input
        for record in records:
            if record.partition != self._partition:
                self._use_partition(record.partition)
            moved.add(record.partition)
            # An input record is applied without a coroutine of its own (one per record
            # cost 2% of ingest); ticks, dead letters and failures take the awaited path.
            try:
                if record.topic != settle:
                    dead = on_input(record)
                    if dead is not None:  # delivered with the sub-batch's state
                        self.checkpoint.output(await self._dead_letter_nowait(dead))
                else:
                    await self._deliver(self.processor.on_tick(record))
            except Exception as exc:  # never escape: the batch's other records go on
                await self._failed(record, exc)
        if self.processor.gated:  # inputs moved: cases they held may be due now
            self.processor.recheck_gated(moved)
        if self.network is not None and self.serving():
            now = time.monotonic()
            if now - self._entities_swept >= self.s.state_sweep_interval_s:
                self._entities_swept = now
                self.network.sweep(self._owns_now)
        await self.brief_due_cases()
        return self.checkpoint.close_sub_batch()

    async def _failed(self, record: Any, exc: Exception) -> None:
        """A record whose handling raised (called in its `except`): counted, logged with
        its traceback, dead-lettered."""
        self.metrics.processing_errors.labels("process").inc()
        log.exception(
            "record failed; dead-lettering it",
            extra={"topic": record.topic, "partition": record.partition, "offset": record.offset},
        )
        await self._dead_letter_or_die(as_in_message(record), exc)

    async def brief_due_cases(self) -> None:
        """Brief due cases without waiting for their tick's round trip through Kafka.
        Deterministic briefs go out together: one delivery wait for all of them."""
        if not self.serving():  # restoring state, or rebalancing: cases wait for it
            return
        plans = []
        for case_id, partition in self.processor.due_now(self._active_partitions()):
            if case_id in self._publishing:
                continue
            if self.stage is not None and self.stage.busy(case_id):
                continue
            self._use_partition(partition)
            try:
                plan = self.processor.plan_brief(case_id)
            except Exception:  # the case stays pending; its tick retries it
                self.metrics.processing_errors.labels("brief").inc()
                log.exception("briefing a due case failed; its settle tick will retry")
                continue
            if plan is None:
                continue
            if self.stage is None:
                plans.append(plan)
            else:
                self.stage.offer(plan)  # the model writes it off the worker's path
        if self.processor.wants_end_offsets:  # a case is held by the inputs gate: ask now
            self.processor.wants_end_offsets = False
            self.asker.ask_now()
        if plans:
            await self._publish_together(plans)
        if self.stage is not None:
            self.stage.end_round()

    async def _publish_together(self, plans: list[BriefPlan]) -> None:
        """Send every brief, then wait for all deliveries; a case whose brief was not
        delivered stays pending (its tick retries it)."""
        ids = {plan.case_id for plan in plans}
        self._publishing |= ids
        try:
            sent = [await self._send_nowait(plan.output) for plan in plans]
            delivered = await asyncio.gather(*sent, return_exceptions=True)
        finally:
            self._publishing -= ids
        for plan, result in zip(plans, delivered, strict=True):
            if isinstance(result, BaseException):
                self.metrics.processing_errors.labels("brief").inc()
                log.error("a brief was not delivered; its settle tick will retry: %r", result)
                continue
            self._use_partition(plan.partition)  # no await between this and the writes
            self.processor.finalize_brief(plan)

    async def _deliver(self, plan: BriefPlan | None) -> None:
        if plan is None:
            return
        if self.stage is None:
            await self.publish(plan, in_sub_batch=True)
        else:
            self.stage.offer(plan)  # the model writes it off the worker's path

    async def publish(self, plan: BriefPlan, in_sub_batch: bool = False) -> None:
        """Deliver a brief, then record it as briefed. Off a sub-batch (a model task's),
        not if a rebalance began meanwhile and the case may be another worker's now: it
        stays pending, and whoever owns it briefs it again (the same brief id). In one,
        the partition is ours: a rebalance waits for the sub-batch in hand."""
        self._publishing.add(plan.case_id)
        try:
            await self.send(plan.output)  # delivered before the case is recorded as briefed
        finally:
            self._publishing.discard(plan.case_id)
        if not in_sub_batch and not (self.serving() and self.owns(plan.partition)):
            log.info("a brief went out during a rebalance; its case is left pending")
            return
        self._use_partition(plan.partition)  # no await between this and the writes below
        self.processor.finalize_brief(plan)

    async def send(self, out: Outgoing) -> None:
        await (await self._send_nowait(out))  # delivered before the input offset is acked
        if out.topic == self.topics.dlq:
            self.metrics.dlq_published.inc()

    async def _send_nowait(self, out: Outgoing) -> Awaitable[Any]:
        """Queue `out` with the producer; the returned future completes on delivery."""
        fut: Awaitable[Any] = await self.app.producer.send(
            out.topic, out.key, out.value, out.partition, None, out.headers
        )
        return fut

    async def persist(self) -> None:
        """Write cached state changes and wait until the changelog has them (the LLM
        stage's tasks use it: they may finish while no batch is being handled)."""
        await self.checkpoint.persist()

    def undeliverable(self, exc: BaseException) -> NoReturn:
        log.error("changelog write failed: %s", exc)
        die("state changes could not be written to the changelog")

    def _write_tables(self) -> None:
        for table in self.tables.values():
            table.flush()

    def _use_partition(self, partition: int) -> None:
        self._partition = partition
        for table in self.tables.values():
            table.partition = partition

    async def _dead_letter_or_die(self, msg: InMessage, exc: Exception) -> None:
        try:
            record = dead_letter(self.topics.dlq, msg, exc, stage="process")
            self.checkpoint.output(await self._dead_letter_nowait(record))
        except Exception:
            die("a record could be neither processed nor dead-lettered")

    async def _dead_letter_nowait(self, out: Outgoing) -> Awaitable[Any]:
        """Queue a dead letter; its delivery is joined to the sub-batch (checkpoint)."""
        delivery = await self._send_nowait(out)
        counted = asyncio.ensure_future(delivery)
        counted.add_done_callback(
            lambda f: None if f.cancelled() or f.exception() else self.metrics.dlq_published.inc()
        )
        return counted

    def _active_partitions(self) -> set[int]:
        alerts = self.topics.alerts
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == alerts}

    def _committed(self, topic: str, partition: int) -> int | None:
        return internals.committed_offset(self.app, topic, partition)

    # -- ownership: what the LLM stage asks before it writes ------------------------------

    def serving(self) -> bool:
        """Started, not rebalancing, state restored: writes and briefs may happen (at
        shutdown too, until the worker leaves the group: drained calls publish)."""
        return self._serving and not self.app.rebalancing

    def owns(self, partition: int) -> bool:
        return partition in self._active_partitions()

    def _owns_now(self, partition: int) -> bool:
        return partition in self._owned and not self.app.rebalancing

    def _delivered(self, topic: str, partition: int, offset: int) -> None:
        store = self._stores.get(topic)
        if store is not None:  # the table now reflects its changelog up to `offset`
            store.set_persisted_offset(TP(topic, partition), offset)

    def _trimmed(self, table: str) -> Callable[[str], None]:
        def count(outcome: str) -> None:
            self.metrics.state_trimmed.labels(table, outcome).inc()

        return count

    # -- timers and signals -----------------------------------------------------------

    def _register_timers(self) -> None:
        app = self.app
        app.timer(TIMER_INTERVAL_S, name="settle-ticks")(self._settle_ticks)
        app.timer(LAG_INTERVAL_S, name="consumer-lag")(self._observe_consumer)
        app.timer(processor_mod.RECHECK_S, name="inputs-gate")(self._ask_log_ends)
        app.timer(BROKER_PROBE_INTERVAL_S, name="broker-probe")(self._probe_broker)
        if self.codec.registry is not None:
            app.timer(BROKER_PROBE_INTERVAL_S, name="registry-probe")(self._probe_registry)
        app.timer(GarbageCollection.CHECK_INTERVAL_S, name="gc-freeze")(self._freeze_survivors)
        app.task(self._on_started)
        app.on_partitions_revoked.connect(self._hand_back_revoked, weak=False)
        app.on_partitions_assigned.connect(self._keep_assigned, weak=False)
        app.on_before_shutdown.connect(self._drain_on_shutdown, weak=False)

    async def _settle_ticks(self) -> None:
        if self.serving():
            for tick in self.processor.due_ticks(self._active_partitions()):
                await self.send(self.processor.tick_message(tick))
        self.processor.observe_state()
        if self.stage is not None:
            self.stage.observe()

    async def _ask_log_ends(self) -> None:
        self.asker.ask_now()

    async def _released(self) -> None:
        """Cases the inputs gate's answer released: briefed now, outside a sub-batch (their
        state is acknowledged with the next one: the changelog is cumulative)."""
        await self.brief_due_cases()
        self.processor.count_consumed()  # the index messages its asks sent
        self._write_tables()

    async def _observe_consumer(self) -> None:
        lags = consumer_lag(self.app, (*self.topics.inputs, self.topics.settle))
        for topic, lag in lags.items():
            self.metrics.consumer_lag.labels(topic).set(lag)
        active = self._active_partitions()
        holding = bool(active)
        for p in range(self.partitions):
            self.metrics.partitions_owned.labels(str(p)).set(1 if p in active else 0)
        self.health.observe_progress(
            self.records_handled, sum(lags.values()), holding, self.app.rebalancing
        )
        self.metrics.ready.set(1 if self.readiness()[0] else 0)

    def readiness(self) -> tuple[bool, dict[str, bool]]:
        """/readyz: each check and whether all hold (ops/health.py)."""
        return self.health.check(
            Snapshot(
                rebalancing=bool(self.app.rebalancing),
                fetch_loop_age_s=internals.fetch_loop_age(self.app),
                state_undelivered_s=self.changelog.oldest_undelivered_s(),
                state_failed=self.changelog.failed,
            )
        )

    async def _freeze_survivors(self) -> None:
        self.gc.freeze_survivors()

    async def _probe_broker(self) -> None:
        self.health.broker_ok = await broker_reachable(self.s.kafka_bootstrap)

    async def _on_started(self) -> None:
        self.gc.start()
        if self.network is not None:  # asks and answers go out without a metadata wait
            await self.changelog.warm((self.topics.entity_index, self.topics.entity_links))
        self.health.broker_ok = await broker_reachable(self.s.kafka_bootstrap)
        if self.codec.registry is not None:
            await self._probe_registry()
        self._serving = self.health.started = True

    async def _probe_registry(self) -> None:
        self.health.registry_ok = await registry_answers(
            self.codec, (self.topics.briefs, self.topics.shadow_briefs), self.health.registry_ok
        )

    async def _hand_back_revoked(
        self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any
    ) -> None:
        """Revoked (with aiokafka, every partition at every rebalance): cases waiting for a
        model slot go back to pending; calls in flight go on until the assignment says
        whether their partitions stay (`_keep_assigned`)."""
        self._owned = frozenset()
        if self.stage is not None and args:
            moved = {tp.partition for tp in args[0] if tp.topic == self.topics.alerts}
            if n := self.stage.hand_back(moved):
                log.info("rebalance: %d cases waiting for the model handed back", n)

    async def _keep_assigned(self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        """The new assignment: calls for cases of partitions it does not give back stop."""
        if args:
            self._owned = frozenset(
                tp.partition for tp in args[0] if tp.topic == self.topics.alerts
            )
        if self.stage is not None and args:
            kept = {tp.partition for tp in args[0] if tp.topic == self.topics.alerts}
            if n := self.stage.keep_only(kept):
                log.info("rebalance: %d model calls abandoned (their partitions moved)", n)

    async def _drain_on_shutdown(
        self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any
    ) -> None:
        """SIGTERM: the consumer has stopped and its last batch is done; let model calls
        finish within the grace period, hand the rest back, and flush state."""
        self.health.started = False  # /readyz: not ready while stopping
        await self.asker.settle(ASK_GRACE_S)  # an answer being acted on; not a hung ask
        if self.stage is not None:
            finished, handed_back = await self.stage.drain(self.s.shutdown_grace_s)
            log.info(
                "shutdown: %d model briefs finished, %d cases handed back (still pending)",
                finished,
                handed_back,
                extra={"finished": finished, "handed_back": handed_back},
            )
        try:
            await self.persist()
        except Exception:
            log.exception("shutdown: state changes could not be flushed to the changelog")
