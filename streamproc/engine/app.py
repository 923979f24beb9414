"""The worker: faust's group membership, tables and recovery around our batch path.

Input records reach `CaseWorker.handle` in sub-batches straight from the consumer
(internals.BatchConsumer), not through a faust agent. A record that fails goes to the
DLQ with the reason; nothing escapes a batch. Table writes carry the partition of the
record (or case) that caused them, so changelogs stay co-partitioned with the inputs;
timers never write state, they send settle ticks to the case's own partition and the
worker acts on the tick when it comes back (or sooner, when a batch finds it due).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import faust
from faust.types import TP
from mode import Service

from streamproc.config import Settings
from streamproc.contracts.codec import AvroCodec
from streamproc.contracts.topics import changelog_limit, load_topics
from streamproc.domain import bounds
from streamproc.engine import internals
from streamproc.engine import processor as processor_mod
from streamproc.engine.checkpoint import Checkpoint
from streamproc.engine.dlq import InMessage, Outgoing, as_in_message, dead_letter
from streamproc.engine.llm_stage import llm_stage
from streamproc.engine.processor import BriefPlan, CaseProcessor
from streamproc.engine.state import ConfluentChangelog, Shrink, WriteBackTable
from streamproc.kafka import security
from streamproc.kafka.clients import producer_config
from streamproc.ops.http import HttpServer, build_http_app
from streamproc.ops.metrics import Metrics

log = logging.getLogger(__name__)
TABLES = ("windows", "cases", "pending", "llm_cache")
# How a value over its changelog's record limit is trimmed (a table without: not kept).
SHRINK: dict[str, Shrink] = {"windows": bounds.shrink_window, "cases": bounds.shrink_case}
TIMER_INTERVAL_S = 0.1
BROKER_PROBE_INTERVAL_S = 5.0
LAG_INTERVAL_S = 2.0
ASK_GRACE_S = 1.0  # at shutdown, for the inputs gate's ask out
DLQ_MAX_BYTES = 4 * 1024 * 1024


@dataclass
class Health:
    """What /readyz reports; updated by the worker as it runs."""

    started: bool = False
    broker_ok: bool = False
    registry_ok: bool | None = None  # None: no registry configured

    def check(self, app: faust.App) -> tuple[bool, dict[str, bool]]:
        checks = {
            "started": self.started,
            "broker_reachable": self.broker_ok,
            "not_rebalancing": not app.rebalancing,
        }
        if self.registry_ok is not None:
            checks["registry_reachable"] = self.registry_ok
        return all(checks.values()), checks


def changelog_topics(settings: Settings) -> list[str]:
    return [f"{settings.app_id}-{name}-changelog" for name in TABLES]


class CaseWorker:
    """One worker: fetched records → state → due cases briefed → changelog → acks.

    Read it in this order:
      `handle`           a sub-batch of input records, from internals.BatchConsumer;
        `_apply`         one record: the processor applies it, a bad one is dead-lettered;
        `brief_due_cases` cases due now are briefed in line (or offered to the model);
        the changelog's durable future, after which the consumer acks the offsets.
      `publish`          a brief is delivered, then recorded as briefed.
      the timers         settle ticks, log-end offsets for the case gate, lag, health.

    faust keeps group membership, the co-partitioning assignor, changelog recovery and
    the commit of acknowledged offsets; records of the input topics never go through its
    per-message path (internals.py says why and what is guaranteed).
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
        t = self.topics
        # internals.BatchSink: the order a fetch's records are handled. Alerts first: a
        # case held by the inputs gate asks for log-end offsets while the transactions
        # and signals fetched with it are handled (at 26,000 events/s, p99 210-518 ms
        # with alerts last, 223-231 ms first). The gate, not this order, makes a brief
        # wait for its inputs.
        self.input_topics = (t.alerts, t.transactions, t.device_signals, t.feedback, t.settle)
        self.health = Health()
        self.app = faust.App(
            settings.app_id,
            broker=[f"kafka://{hp.strip()}" for hp in settings.kafka_bootstrap.split(",")],
            broker_credentials=security.faust_credentials(security.resolve(settings)),
            store=internals.TRACKED_STORE,
            datadir=str(settings.data_dir),
            web_enabled=False,
            topic_partitions=partitions,
            topic_replication_factor=replication,
            table_standby_replicas=settings.table_standby_replicas,
            broker_rebalance_timeout=settings.broker_rebalance_timeout_s,
            broker_session_timeout=settings.broker_session_timeout_s,
            broker_heartbeat_interval=settings.broker_heartbeat_interval_s,
            consumer_auto_offset_reset="earliest",
            key_serializer="json",  # for the tables; the source topic says raw itself
            value_serializer="json",
            producer_acks=-1,
            # A dead-lettered record keeps its value: the producer must take the largest
            # input record plus headers (inputs allow 2 MiB, the DLQ topic 4 MiB).
            producer_max_request_size=DLQ_MAX_BYTES,
            broker_max_poll_records=10_000,
            consumer_max_fetch_size=8 * 1024 * 1024,
            # Seeks the inputs to their committed offsets before resuming them.
            TableManager=internals.TableManager,
        )
        self.changelog = ConfluentChangelog(producer_config(settings), on_offset=self._delivered)
        self.checkpoint = Checkpoint(self.changelog, self._write_tables, self.undeliverable)
        internals.install(self.app, settings.broker_fetch_max_wait_ms, sink=self)
        self.tables = {}
        self._stores: dict[str, internals.TrackedMemoryStore] = {}  # by changelog topic
        topics = load_topics()
        for name in TABLES:
            table = self.app.Table(name, partitions=partitions)
            store = internals.tracked_store(table)
            self.tables[name] = WriteBackTable(
                table,
                self.changelog,
                internals.store_dict(table),
                tracker=store,
                max_bytes=changelog_limit(name, topics),
                shrink=SHRINK.get(name),
                on_trim=self._trimmed(name),
            )
            self._stores[self.tables[name].topic] = store
            store.on_restored = metrics.state_restored.labels(name).inc
        self.processor = CaseProcessor(
            settings,
            codec,
            metrics,
            self.tables["windows"],
            self.tables["cases"],
            self.tables["pending"],
            committed=self._committed,
            partitions=partitions,
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
        self._publishing: set[str] = set()  # cases whose brief is being delivered
        # The inputs gate's ask for log-end offsets: one out at a time, another wanted.
        self._ask: asyncio.Task[None] | None = None
        self._ask_again = False
        self.gc = GarbageCollection()
        self._register_timers()

    # -- from fetch to brief ------------------------------------------------------------

    async def handle(self, records: list[Any]) -> asyncio.Future[None]:
        """Apply a sub-batch of records, brief the cases now due, write the changelog;
        returns the future of its dead letters' and state's delivery (the offsets are
        acked after it: engine/checkpoint.py)."""
        if self.codec.registry is not None:  # ids the batch needs, fetched off the loop
            unresolved = self.codec.unresolved_ids(r.value for r in records)
            if unresolved and await self.codec.resolve_ids(unresolved):
                self.health.registry_ok = False  # those records go to the DLQ, with why
        moved: set[int] = set()
        for record in records:
            if record.partition != self._partition:
                self._use_partition(record.partition)
            moved.add(record.partition)
            await self._apply(record)
        if self.processor.gated:  # inputs moved: cases they held may be due now
            self.processor.recheck_gated(moved)
        await self.brief_due_cases()
        return self.checkpoint.close_sub_batch()

    async def _apply(self, record: Any) -> None:
        try:
            if record.topic == self.topics.settle:
                await self._deliver(self.processor.on_tick(record))
                return
            dead = self.processor.on_input(record)
            if dead is not None:  # delivered with the sub-batch's state, not one by one
                self.checkpoint.output(await self._dead_letter_nowait(dead))
        except Exception as exc:  # never escape: the batch's other records must go on
            self.metrics.processing_errors.labels("process").inc()
            log.exception(
                "record failed; dead-lettering it",
                extra={
                    "topic": record.topic,
                    "partition": record.partition,
                    "offset": record.offset,
                },
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
            self._ask_end_offsets_now()
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
            await self.publish(plan)
        else:
            self.stage.offer(plan)  # the model writes it off the worker's path

    async def publish(self, plan: BriefPlan) -> None:
        self._publishing.add(plan.case_id)
        try:
            await self.send(plan.output)  # delivered before the case is recorded as briefed
        finally:
            self._publishing.discard(plan.case_id)
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
        """Started, not rebalancing, state restored: writes and briefs may happen."""
        return self.health.started and not self.app.rebalancing and not self.app.should_stop

    def owns(self, partition: int) -> bool:
        return partition in self._active_partitions()

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
        app.timer(processor_mod.RECHECK_S, name="inputs-gate")(self._ask_end_offsets_fallback)
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

    def _ask_end_offsets_now(self) -> None:
        """Ask for the log-end offsets of the inputs of partitions with a case pending: a
        case is briefed once its inputs are read up to the alert's time or to these
        offsets. Asked as soon as a case is held by that gate (or as soon as the ask out
        comes back: only an ask sent after the alert came counts), else every RECHECK_S.
        Started here, not by waking a waiting task, which took a few turns of the event
        loop, each one a sub-batch long."""
        if self.app.should_stop:
            return
        if self._ask is not None:
            self._ask_again = True
            return
        self._ask_again = False
        self._ask = asyncio.ensure_future(self._ask_and_recheck())

    async def _ask_and_recheck(self) -> None:
        try:
            if not self.serving():  # a partly restored case must not be briefed
                return
            if await self._ask_end_offsets() and self.processor.recheck_gated(None):
                await self.brief_due_cases()
                self._write_tables()  # acked with the next sub-batch (cumulative)
        except Exception:  # the cases stay gated; the next ask or RECHECK_S retries
            log.exception("the inputs gate's ask failed")
        finally:
            self._ask = None
        if self._ask_again:
            self._ask_end_offsets_now()

    async def _ask_end_offsets_fallback(self) -> None:
        self._ask_end_offsets_now()

    async def _ask_end_offsets(self) -> bool:
        waiting = self.processor.partitions_waiting(self._active_partitions())
        if not waiting:
            return False
        t = self.topics
        tps = [TP(topic, p) for topic in t.events for p in waiting]
        asked_at = time.time()
        positions = {tp: self.processor.inputs.position(tp.topic, tp.partition) for tp in tps}
        known = {tp: n for tp, n in positions.items() if n is not None}
        try:
            ends = await internals.log_ends_from(self.app, known)
            if unanswered := [tp for tp in tps if tp not in ends]:  # never read; out of range
                ends.update(await self.app.consumer.highwaters(*unanswered))
        except Exception:  # broker away, rebalancing: cases wait, at most CASE_MAX_WAIT_S
            log.debug("log-end offsets not available", exc_info=True)
            return False
        ends_by_key = {(tp.topic, tp.partition): n for tp, n in ends.items()}
        self.processor.inputs.note_end_offsets(ends_by_key, asked_at)
        return True

    async def _observe_consumer(self) -> None:
        for topic, lag in consumer_lag(self.app, (*self.topics.inputs, self.topics.settle)).items():
            self.metrics.consumer_lag.labels(topic).set(lag)
        self.metrics.ready.set(1 if self.health.check(self.app)[0] else 0)

    async def _freeze_survivors(self) -> None:
        self.gc.freeze_survivors()

    async def _probe_broker(self) -> None:
        self.health.broker_ok = await broker_reachable(self.s.kafka_bootstrap)

    async def _on_started(self) -> None:
        self.gc.start()
        self.health.broker_ok = await broker_reachable(self.s.kafka_bootstrap)
        if self.codec.registry is not None:
            await self._probe_registry()
        self.health.started = True

    async def _probe_registry(self) -> None:
        """Register the output schemas until that succeeds, then check the registry
        answers; in a thread, with the client's timeout (never on the event loop)."""
        registry, outputs = self.codec.registry, (self.topics.briefs, self.topics.shadow_briefs)
        assert registry is not None
        try:
            if not self.codec.registered(outputs):
                await self.codec.register_outputs(outputs)
            else:
                await asyncio.to_thread(registry.ping)
        except Exception as exc:
            if self.health.registry_ok is not False:
                log.warning("schema registry not reachable: %s", type(exc).__name__)
            self.health.registry_ok = False
            return
        self.health.registry_ok = True

    async def _hand_back_revoked(
        self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any
    ) -> None:
        """Revoked (with aiokafka, every partition at every rebalance): cases waiting for a
        model slot go back to pending; calls in flight go on until the assignment says
        whether their partitions stay (`_keep_assigned`)."""
        if self.stage is not None and args:
            moved = {tp.partition for tp in args[0] if tp.topic == self.topics.alerts}
            if n := self.stage.hand_back(moved):
                log.info("rebalance: %d cases waiting for the model handed back", n)

    async def _keep_assigned(self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        """The new assignment: calls for cases of partitions it does not give back stop."""
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
        if (ask := self._ask) is not None:  # an answer being acted on; not a hung ask
            self._ask_again = False
            done, _ = await asyncio.wait({ask}, timeout=ASK_GRACE_S)
            if not done:
                ask.cancel()
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


EXIT_UNDELIVERABLE = 75  # EX_TEMPFAIL: restart me; nothing was acknowledged


def die(reason: str) -> NoReturn:
    """Stop at once, without acknowledging the batch in hand.

    The clients already retried until their delivery timeouts; exiting lets the
    orchestrator restart the worker, which re-reads the unacknowledged records
    (at-least-once). Raising instead would leave the consumer running past state it
    could not write.
    """
    log.critical("%s; exiting with %d so the records are read again", reason, EXIT_UNDELIVERABLE)
    logging.shutdown()
    os._exit(EXIT_UNDELIVERABLE)


class GarbageCollection:
    """Keep CPython's full garbage collections short: they walk every tracked object with
    the worker stopped, and the state (half a million dicts at 200,000 accounts) made
    each one 300 ms or more, the largest part of alert-to-brief p99 at half load.

    What exists once the worker has started is frozen (moved where the collector never
    looks); after each full collection, what survived it is frozen too, so the next one
    walks only what was created since (measured: 50-60 ms a full collection at half load
    with the start-up heap alone, 4-6 ms frozen). Frozen objects are still freed by
    reference counting when dropped, which is how state goes (windows and cases hold no
    cycles); only a cycle that includes a frozen object is never collected, a small
    leak bounded by what is alive at each freeze."""

    CHECK_INTERVAL_S = 1.0

    def __init__(self) -> None:
        self._full_since_freeze = False

    def start(self) -> None:
        gc.collect()
        gc.freeze()
        gc.callbacks.append(self._on_collection)

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info.get("generation") == 2:
            self._full_since_freeze = True  # frozen from the event loop, not in here

    def freeze_survivors(self) -> None:
        if self._full_since_freeze:
            self._full_since_freeze = False
            gc.freeze()


def partition_lag(app: faust.App, topic: str, partition: int) -> int | None:
    """Records left to read on one partition; None when not known (not fetched yet)."""
    consumer = app.consumer
    try:
        tp = TP(topic, partition)
        highwater = consumer.highwater(tp)
    except Exception:
        return None
    if highwater is None:
        return None
    # faust keeps the last offset read and the committed offset (the next one to read).
    last_read = internals.read_offset(app, topic, partition)
    committed = internals.committed_offset(app, topic, partition)
    position = last_read + 1 if last_read is not None else committed or 0
    return max(0, int(highwater) - int(position))


def consumer_lag(app: faust.App, topics: tuple[str, ...]) -> dict[str, int]:
    """Per topic, records on our assigned partitions not read yet."""
    lag = dict.fromkeys(topics, 0)
    try:
        assigned = app.consumer.assignment()
    except Exception:  # not started, or stopping
        return lag
    for tp in assigned:
        if tp.topic in lag:
            lag[tp.topic] += partition_lag(app, tp.topic, tp.partition) or 0
    return lag


async def broker_reachable(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """True when at least one bootstrap address accepts a TCP connection."""
    for hostport in bootstrap.split(","):
        host, _, port = hostport.strip().rpartition(":")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout_s)
        except (OSError, TimeoutError, ValueError):
            continue
        writer.close()
        return True
    return False


class HttpService(Service):
    """/metrics, /healthz, /readyz on STREAMPROC_HTTP_PORT, living as long as the worker."""

    def __init__(self, server: HttpServer, **kwargs: Any) -> None:
        self.server = server
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        await self.server.start()
        log.info("HTTP endpoints on port %d: /metrics /healthz /readyz", self.server.port)

    async def on_stop(self) -> None:
        await self.server.stop()


def http_service(app: faust.App, health: Health, metrics: Metrics, port: int) -> HttpService:
    web_app = build_http_app(metrics, lambda: health.check(app))
    return HttpService(HttpServer(web_app, "0.0.0.0", port))
