"""The faust app: three tables, one agent over the inputs and settle ticks, one timer.

faust acks an event even when the agent raises, so the agent never lets an
exception escape: a record that fails goes to the DLQ with the reason. Writes to
tables happen only inside the agent (faust needs the current event to pick the
changelog partition); the timer therefore sends settle ticks to the case's own
partition and the agent briefs the case when the tick comes back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import TP
from mode import Service

from streamproc.config import Settings
from streamproc.contracts.codec import AvroCodec
from streamproc.engine import processor as processor_mod
from streamproc.engine import recovery, transport
from streamproc.engine.dlq import InMessage, Outgoing, dead_letter
from streamproc.engine.llm_stage import llm_stage
from streamproc.engine.processor import BriefPlan, CaseProcessor
from streamproc.engine.state import ConfluentChangelog, WriteBackTable
from streamproc.kafka import security
from streamproc.kafka.clients import producer_config
from streamproc.ops.http import HttpServer, build_http_app
from streamproc.ops.metrics import Metrics

log = logging.getLogger(__name__)
TABLES = ("windows", "cases", "pending", "llm_cache")
TIMER_INTERVAL_S = 0.1
BATCH_MAX = 500  # records per batch: changelog writes are coalesced per key within one
BATCH_WITHIN_S = 0.05
BROKER_PROBE_INTERVAL_S = 5.0
LAG_INTERVAL_S = 2.0
DLQ_MAX_BYTES = 4 * 1024 * 1024


@dataclass
class Health:
    """What /readyz reports; updated by the worker as it runs."""

    started: bool = False
    broker_ok: bool = False

    def check(self, app: faust.App) -> tuple[bool, dict[str, bool]]:
        checks = {
            "started": self.started,
            "broker_reachable": self.broker_ok,
            "not_rebalancing": not app.rebalancing,
        }
        return all(checks.values()), checks


def changelog_topics(settings: Settings) -> list[str]:
    return [f"{settings.app_id}-{name}-changelog" for name in TABLES]


def build_app(
    settings: Settings, codec: AvroCodec, metrics: Metrics, partitions: int, replication: int
) -> tuple[faust.App, Health]:
    """The faust app for `partitions` co-partitioned input partitions."""
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{hostport.strip()}" for hostport in settings.kafka_bootstrap.split(",")],
        broker_credentials=security.faust_credentials(security.resolve(settings)),
        store="memory://",
        datadir=str(settings.data_dir),
        web_enabled=False,
        topic_partitions=partitions,
        topic_replication_factor=replication,
        broker_rebalance_timeout=settings.broker_rebalance_timeout_s,
        broker_session_timeout=settings.broker_session_timeout_s,
        broker_heartbeat_interval=settings.broker_heartbeat_interval_s,
        consumer_auto_offset_reset="earliest",
        key_serializer="json",  # for the tables; the source topic says raw itself
        value_serializer="json",
        producer_acks=-1,
        # A dead-lettered record keeps its value: the producer must take the largest input
        # record plus headers (inputs allow 2 MiB, the DLQ topic 4 MiB; topics/topics.yaml).
        producer_max_request_size=DLQ_MAX_BYTES,
        # Fetch and buffer more per round trip: the agent takes batches anyway.
        stream_buffer_maxsize=32_768,
        broker_max_poll_records=10_000,
        consumer_max_fetch_size=8 * 1024 * 1024,
        # Seeks the inputs to their committed offsets before resuming them (recovery.py).
        TableManager=recovery.TableManager,
    )
    changelog = ConfluentChangelog(producer_config(settings))
    transport.install(app, settings.broker_fetch_max_wait_ms)
    tables = {
        name: WriteBackTable(app.Table(name, partitions=partitions), changelog) for name in TABLES
    }
    processor = CaseProcessor(
        settings, codec, metrics, tables["windows"], tables["cases"], tables["pending"]
    )
    topics = settings.topics

    processor.committed = lambda topic, partition: committed_offset(app, topic, partition)
    source = app.topic(
        *topics.inputs,
        topics.settle,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    health = Health()

    async def dead_letter_or_die(msg: InMessage, exc: Exception) -> None:
        try:
            await send(dead_letter(topics.dlq, msg, exc, stage="process"))
        except Exception:
            die("a record could be neither processed nor dead-lettered")

    async def send(out: Outgoing) -> None:
        fut = await app.producer.send(
            out.topic, out.key, out.value, out.partition, None, out.headers
        )
        await fut  # delivered before the input offset can be committed
        if out.topic == topics.dlq:
            metrics.dlq_published.inc()

    async def handle(msg: InMessage) -> None:
        if msg.topic == topics.settle:
            await deliver(processor.on_tick(msg))
            return
        for out in processor.on_input(msg):
            await send(out)

    def active_partitions() -> set[int]:
        return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topics.alerts}

    def use_partition(partition: int) -> None:
        for table in tables.values():
            table.partition = partition

    async def publish(plan: BriefPlan) -> None:
        await send(plan.output)  # delivered before the case is recorded as briefed
        use_partition(plan.partition)  # no await between this and the writes below
        processor.finalize_brief(plan)

    async def persist() -> None:
        """Apply cached state writes and wait until the changelog has them (used after each
        batch, and by LLM tasks, which may finish while no batch is running)."""
        if sum(table.flush() for table in tables.values()):
            await asyncio.to_thread(changelog.flush)

    stage = llm_stage(settings, codec, metrics, tables["llm_cache"], publish, send, persist)

    async def deliver(plan: BriefPlan | None) -> None:
        if plan is None:
            return
        if stage is None:
            await publish(plan)
        else:
            stage.offer(plan)  # the model writes it off the agent's path

    async def brief_due_cases() -> None:
        """Brief due cases without waiting for their tick's round trip through Kafka."""
        for case_id, partition in processor.due_now(active_partitions()):
            if stage is not None and case_id in stage.in_flight:
                continue
            use_partition(partition)
            try:
                await deliver(processor.plan_brief(case_id))
            except Exception:  # the case stays pending; its tick retries it
                metrics.processing_errors.labels("brief").inc()
                log.exception("briefing a due case failed; its settle tick will retry")
        if stage is not None:
            stage.end_round()

    async def handle_batch(events: list[Any]) -> None:
        for event in events:
            msg = to_in_message(event.message)
            use_partition(msg.partition)
            try:
                await handle(msg)
            except Exception as exc:  # never escape: faust would ack and lose the event
                metrics.processing_errors.labels("process").inc()
                log.exception(
                    "record failed; dead-lettering it",
                    extra={"topic": msg.topic, "partition": msg.partition, "offset": msg.offset},
                )
                await dead_letter_or_die(msg, exc)
        await brief_due_cases()
        # Changelog writes go out before faust acks the batch (the acks follow this return).
        try:
            await persist()
        except Exception:
            log.exception("changelog write failed")
            die("state changes could not be written to the changelog")

    @app.agent(source, name="account-processor")
    async def account_processor(stream: Any) -> None:
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
            await handle_batch(events)

    @app.timer(TIMER_INTERVAL_S)
    async def settle_timer() -> None:
        for tick in processor.due_ticks(active_partitions()):
            await send(processor.tick_message(tick))
        processor.observe_state()
        if stage is not None:
            stage.observe()

    @app.on_partitions_revoked.connect
    async def hand_back_revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        """A case whose partition moved is briefed by its new owner, not by us."""
        if stage is not None and args:
            moved = {tp.partition for tp in args[0] if tp.topic == topics.alerts}
            if n := stage.hand_back(moved):
                log.info("rebalance: handed back %d cases being briefed by the model", n)

    @app.on_before_shutdown.connect
    async def drain(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        """SIGTERM: the consumer has stopped and its last batch is done; let model calls
        finish within the grace period, hand the rest back, and flush state."""
        health.started = False  # /readyz: not ready while stopping
        if stage is not None:
            finished, handed_back = await stage.drain(settings.shutdown_grace_s)
            log.info(
                "shutdown: %d model briefs finished, %d cases handed back (still pending)",
                finished,
                handed_back,
                extra={"finished": finished, "handed_back": handed_back},
            )
        try:
            await persist()
        except Exception:
            log.exception("shutdown: state changes could not be flushed to the changelog")

    @app.timer(processor_mod.RECHECK_S)
    async def ask_end_offsets() -> None:
        """Log-end offsets of the inputs of partitions with a case pending: a case is
        briefed once its inputs are read up to the alert's time or to these offsets."""
        waiting = processor.partitions_waiting(active_partitions())
        if not waiting:
            return
        tps = [TP(t, p) for t in topics.inputs if t != topics.alerts for p in waiting]
        asked_at = time.time()
        try:
            ends = await app.consumer.highwaters(*tps)
        except Exception:  # broker away, rebalancing: cases wait, at most CASE_MAX_WAIT_S
            log.debug("log-end offsets not available", exc_info=True)
            return
        ends_by_key = {(tp.topic, tp.partition): n for tp, n in ends.items()}
        processor.note_end_offsets(ends_by_key, asked_at)

    @app.timer(LAG_INTERVAL_S)
    async def observe_consumer() -> None:
        for topic, lag in consumer_lag(app, (*topics.inputs, topics.settle)).items():
            metrics.consumer_lag.labels(topic).set(lag)
        metrics.ready.set(1 if health.check(app)[0] else 0)  # for Prometheus, not only /readyz

    @app.timer(BROKER_PROBE_INTERVAL_S)
    async def broker_probe() -> None:
        health.broker_ok = await broker_reachable(settings.kafka_bootstrap)

    @app.task
    async def on_started() -> None:
        health.broker_ok = await broker_reachable(settings.kafka_bootstrap)
        health.started = True

    return app, health


EXIT_UNDELIVERABLE = 75  # EX_TEMPFAIL: restart me; nothing was acknowledged


def die(reason: str) -> None:
    """Stop at once, without acknowledging the batch in hand.

    faust acknowledges a batch whatever its handler raised (take_events acks in a
    `finally`), so raising here would lose the records. The clients below already
    retried until their delivery timeouts; exiting lets the orchestrator restart the
    worker, which re-reads the unacknowledged records (at-least-once).
    """
    log.critical("%s; exiting with %d so the records are read again", reason, EXIT_UNDELIVERABLE)
    logging.shutdown()
    os._exit(EXIT_UNDELIVERABLE)


def committed_offset(app: faust.App, topic: str, partition: int) -> int | None:
    """Where the group resumes on (topic, partition): the next offset to read, as faust
    holds it since the partition was assigned (None before any commit)."""
    offsets = getattr(app.consumer, "_committed_offset", {})
    return offsets.get(TP(topic, partition))


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
    last_read = getattr(consumer, "_read_offset", {}).get(tp)
    committed = committed_offset(app, topic, partition)
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


def to_in_message(message: Any) -> InMessage:
    headers = message.headers
    if isinstance(headers, dict):
        headers = list(headers.items())
    return InMessage(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        headers=list(headers or ()),
        timestamp_ms=int(message.timestamp * 1000) if message.timestamp else None,
    )


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
