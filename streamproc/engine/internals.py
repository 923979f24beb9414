"""Every use of faust's and aiokafka's private names, in one place.

faust-streaming and aiokafka are pinned to the releases these overrides were written
against (pyproject.toml: faust-streaming 0.15.x, aiokafka 0.14.x). `check()` runs when
a worker starts and in the unit tests: it fails loudly, naming what is missing, when
an upgrade removes or renames anything used here.

What is overridden, and why:

1. **Input records are drained in batches** (`BatchConsumer._drain_messages`). faust
   hands each record through `wait_first(callback(message), ...)`, the conductor, a
   stream buffer and a per-message ack: about 55 µs per record before our code runs,
   which caps a worker near 17k events/s. Here the records of each fetch that belong
   to the worker's input topics go to the `BatchSink` in sub-batches; changelog and
   standby records keep faust's own per-message path, so table recovery and standbys
   work as faust made them. Guarantees:
   - offsets of a sub-batch are acknowledged only after its outputs and the changelog
     records its processing wrote are delivered (engine/checkpoint.py holds that
     protocol), and committed by faust's own commit of acknowledged offsets;
   - a sub-batch is not started once the flow stops (a rebalance began) or the
     consumer generation changed, and a sub-batch begun before partitions were revoked
     is never acknowledged (`_epoch`): its records are read again by whoever owns the
     partitions next, and processing them twice changes nothing (events and alerts are
     kept by event id);
   - records fetched before a seek that moved the partition's position back (a
     rebalance's seek to the committed offsets) are dropped, and a read-again never
     seeks forward of the position: faust's commit steps over one unacknowledged offset
     (`_new_offset`), so a record after one that was never handled must not be acked;
   - `wait_empty` (revocation, shutdown) waits for the sub-batch in hand to finish and
     for its changelog records to be delivered.
2. **The consumer's fetch max-wait** is configurable (faust hard-codes 1,500 ms; see
   `_ConsumerThread`), and an empty set of active partitions is never sent to aiokafka.
3. **Log-end offsets** are read from a Fetch response as well as ListOffsets
   (`fetched_log_ends`), or from a Fetch alone at the worker's own positions
   (`BatchConsumer.log_ends_from`).
4. **Recovery seeks the inputs before resuming them** (`Recovery`).
5. **The memory store knows the worker's own writes** (`TrackedMemoryStore`). The
   worker writes changelog records itself (engine/state.py), so faust never learns of
   them: its recovery of a partition the worker keeps would re-read everything written
   since the last recovery ended, on every rebalance, with inputs paused (the memory
   store's `persisted_offset` is always None); and the keys of a partition the worker
   loses would stay in memory (faust drops only keys it read from a changelog), to come
   back stale if the partition returns after their tombstones were compacted. Here each
   delivered changelog offset is the partition's persisted offset, once its recovery in
   the current ownership has completed, and each write notes its key's partition; keys
   of partitions no longer active are dropped at each rebalance.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any, Protocol, cast

import faust
from aiokafka import AIOKafkaConsumer
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.consumer.subscription_state import Assignment, SubscriptionState, TopicPartitionState
from aiokafka.errors import KafkaError
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.structs import TopicPartition
from faust import stores as faust_stores
from faust.stores import memory as memory_store
from faust.tables import TableManager as _TableManager
from faust.tables.recovery import Recovery as _Recovery
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as driver
from faust.types import TP
from mode.utils.futures import notify

from streamproc.engine.checkpoint import Checkpoint

log = logging.getLogger(__name__)
READ_COMMITTED = 1  # the Fetch request's isolation level
READ_COMMITTED_NAME = "read_committed"
FETCH_WAITS_MS = (1, 10, 100)
SUB_BATCH_MAX = 500  # records handled between two briefings of due cases
MAX_UNSETTLED = 8  # sub-batches whose changelog delivery may be outstanding at once


class BatchSink(Protocol):
    """Where input records go: the worker."""

    @property
    def input_topics(self) -> Sequence[str]:
        """The input topics, in the order a fetch's records are handled."""
        ...

    @property
    def checkpoint(self) -> Checkpoint:
        """The commit protocol: when handled records may be acknowledged."""
        ...

    async def handle(self, records: list[Any]) -> asyncio.Future[None]:
        """Apply `records` (aiokafka ConsumerRecords of one or more partitions); return
        the future of their outputs and state being durable (engine.checkpoint)."""
        ...


# -- the consumer ---------------------------------------------------------------------


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this when it builds its Fetcher in start(); faust passed 1500.
        # A broker that holds a fetch until the wait expires (the embedded Tansu does;
        # Kafka answers as soon as data arrives) makes it the largest part of alert-to-
        # brief latency. Measured on the embedded broker at 3,600 events/s: p50 859 ms,
        # p99 1,552 ms at 1500; p50 200 ms, p99 309 ms at 100; and at 22,000 events/s on
        # the batch path, p50 ~130 ms at 100 and ~60 ms at 20 (the default now).
        consumer._fetch_max_wait_ms = transport.fetch_max_wait_ms
        # Inputs are read committed: records of an upstream transaction that is open or
        # was aborted are never briefed (faust reads committed only with exactly_once,
        # which would also change its commits). Read in start(), like the wait above.
        consumer._isolation_level = READ_COMMITTED_NAME
        return consumer

    async def getmany(self, active_partitions: Any, timeout: float) -> Any:
        # faust hands over its live set of active partitions, and the request waits its
        # turn on this thread while faust pauses and resumes partitions in that set. An
        # empty set means every assigned partition to aiokafka, which then returns records
        # of paused partitions: faust drops them, and aiokafka's position has moved past
        # them. Ask for the partitions active at the time of asking, never for all.
        if active_partitions is not None:
            active_partitions = set(active_partitions)
            if not active_partitions:
                return {}
        return await super().getmany(active_partitions, timeout)

    async def _highwaters(self, partitions: Any) -> Mapping[Any, int]:
        listed = await super()._highwaters(partitions)
        if self.consumer.in_transaction:
            return listed
        return await fetched_log_ends(self._ensure_consumer(), listed)

    async def log_ends_from(self, positions: Mapping[Any, int]) -> dict[Any, int]:
        return cast(dict[Any, int], await self.call_thread(self._log_ends_from, positions))

    async def _log_ends_from(self, positions: Mapping[Any, int]) -> dict[Any, int]:
        return await fetch_high_watermarks(self._ensure_consumer(), positions)


async def fetched_log_ends(consumer: Any, listed: Mapping[Any, int]) -> dict[Any, int]:
    """The log-end offsets in `listed` (from ListOffsets), each raised to the high
    watermark of a Fetch at that offset.

    Log-end offsets feed faust's table recovery, which reads each changelog partition up
    to them. The embedded broker answers ListOffsets with the base offset of the
    partition's last record batch plus one, short of the real end whenever that batch
    holds more than one record, so a restarted worker restored its tables without their
    newest changelog records (found by the kill -9 fault test). The high watermark in a
    Fetch response is right on every broker."""
    ends = dict(listed)
    fetched = await fetch_high_watermarks(
        consumer, {tp: max(int(n), 0) for tp, n in listed.items()}
    )
    for tp, highwater in fetched.items():
        ends[tp] = max(ends[tp], highwater)
    return ends


async def fetch_high_watermarks(consumer: Any, at: Mapping[Any, int]) -> dict[Any, int]:
    """The end of each partition in `at` as a read-committed consumer sees it (the last
    stable offset; the high watermark where no transaction is open), from a Fetch at the
    offset given (one request per leader, one byte at most); a partition the broker does
    not answer for (offset out of range, leader moved) is left out.

    The Fetch asks for no minimum, so Kafka answers at once; the embedded broker waits
    out the max-wait when there is nothing to return, and leaves out every partition
    when that wait is zero, so the wait starts at 1 ms and grows for partitions that
    were left out."""
    client = consumer._client
    keys = {(tp.topic, tp.partition): tp for tp in at}
    unanswered = set(keys)
    out: dict[Any, int] = {}
    for max_wait_ms in FETCH_WAITS_MS:
        by_node: dict[int, dict[str, list[tuple[int, int, int]]]] = defaultdict(
            lambda: defaultdict(list)
        )
        for topic, partition in unanswered:
            node = client.cluster.leader_for_partition(TopicPartition(topic, partition))
            if node is not None and node >= 0:
                by_node[node][topic].append((partition, int(at[keys[(topic, partition)]]), 1))
        for node, topics in by_node.items():
            request = FetchRequest(max_wait_ms, 0, 1, READ_COMMITTED, list(topics.items()))
            try:
                response = await client.send(node, request)
            except KafkaError:  # left out; the caller asks again later
                log.debug("log-end fetch failed", exc_info=True)
                continue
            for topic, parts in response.topics:
                for partition, error_code, highwater, *rest in parts:
                    if (topic, partition) not in keys or error_code != 0:
                        continue
                    unanswered.discard((topic, partition))
                    out[keys[(topic, partition)]] = _readable_end(int(highwater), rest)
        if not unanswered:
            break
    return out


def _readable_end(highwater: int, rest: list[Any]) -> int:
    """What a read-committed consumer can read up to: the last stable offset (Fetch v4+
    carries it after the high watermark; an open transaction holds it back), else the
    high watermark."""
    if len(rest) >= 2 and isinstance(rest[0], int) and 0 <= rest[0] <= highwater:
        return int(rest[0])
    return highwater


class BatchConsumer(driver.Consumer):
    """faust's aiokafka consumer, draining input records to a `BatchSink` in batches."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sink: BatchSink = cast(Transport, self.transport).sink
        self._order = {topic: i for i, topic in enumerate(self._sink.input_topics)}
        self._epoch = 0  # moves on at each revocation: older sub-batches are not acked
        self._idle = asyncio.Event()
        self._idle.set()
        self.loop_turned_at: float | None = None  # monotonic: the fetch loop runs (readiness)

    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def log_ends_from(self, positions: Mapping[TP, int]) -> dict[TP, int]:
        """Log-end offsets of partitions read up to `positions`, in one round trip (a
        Fetch at each position, where ListOffsets then a Fetch take two); a partition
        the broker does not answer for is left out."""
        return await cast(_ConsumerThread, self._thread).log_ends_from(positions)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        self._epoch += 1
        await super().on_partitions_revoked(revoked)

    async def wait_empty(self) -> None:
        """Wait for the sub-batch in hand and for its changelog records, then faust's."""
        await self._idle.wait()
        await self._settle(keep=0)
        await super().wait_empty()

    async def _drain_messages(self, fetcher: Any) -> None:
        consumer_stopped = self._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set
        try:
            while not (consumer_stopped() or fetcher_stopped()):
                self.loop_turned_at = time.monotonic()
                self.diag.set_flag(faust_consumer.CONSUMER_FETCHING)
                records, active = await self._wait_next_records(1.0)
                await asyncio.sleep(0)
                if self.should_stop:
                    break
                if not records:
                    await self._settle(keep=0)  # nothing fetched: finish the acks now
                    continue
                if not self.flow_active:  # as faust: seek back, read again when resumed
                    try:
                        await self.perform_seek()
                    except Exception as exc:
                        self.log.warning("seek while the flow is stopped failed: %r", exc)
                    continue
                generation = self.app.consumer_generation_id
                inputs = []
                for tp, recs in records.items():
                    position = self._position(tp)
                    if position is None or position <= recs[-1].offset:
                        # Fetched before a seek that moved the position back to or before
                        # them (a rebalance's seek to the committed offsets runs while a
                        # fetch's answer waits its turn on the loop): they are read again
                        # from there. Handled now, records after an unacknowledged one
                        # would be acknowledged, and faust's commit of acknowledged
                        # offsets steps over one missing offset (`Consumer._new_offset`:
                        # `min(acked) - committed > 1`): an alert was lost that way.
                        self.log.info(
                            "fetched before a seek: dropped, read again from the position",
                            extra={"topic": tp.topic, "partition": tp.partition,
                                   "first": recs[0].offset, "position": position},
                        )  # fmt: skip
                        continue
                    if not (active is None or tp in active or tp in self._buffered_partitions):
                        # Paused since it was fetched (faust's live set): aiokafka's
                        # position is past these records, so read them again, or the
                        # next fetch's jump would be taken for a gap and committed over.
                        await self._read_again(tp, recs[0].offset)
                        continue
                    if tp.topic in self._order:
                        inputs.append((tp, recs))
                    else:
                        await self._one_by_one(tp, recs, generation)
                if inputs:
                    await self._in_batches(inputs, generation)
                self.diag.unset_flag(faust_consumer.CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(faust_consumer.CONSUMER_FETCHING)

    async def _one_by_one(self, tp: TP, records: list[Any], generation: int) -> None:
        """faust's own path, for changelog and standby records (table recovery)."""
        commit_every = self._commit_every
        for record in records:
            if not self.flow_active or self.app.consumer_generation_id != generation:
                return
            offset, r_offset = record.offset, self._read_offset[tp]
            if r_offset is not None and offset < r_offset:
                continue
            if r_offset and offset - r_offset > 1 and self.app.topics.acks_enabled_for(tp.topic):
                await self._add_gap(tp, r_offset + 1, offset)
            if commit_every is not None and self._n_acked >= commit_every:
                self._n_acked = 0
                await self.commit()
            self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
            await self.wait_first(
                self.callback(self._to_message(tp, record)), self.suspend_flow.wait()
            )
            self._read_offset[tp] = offset

    async def _in_batches(self, parts: list[tuple[TP, list[Any]]], generation: int) -> None:
        """Hand the input records of one fetch to the sink in sub-batches."""
        self._idle.clear()
        try:
            epoch = self._epoch
            parts.sort(key=lambda part: self._order[part[0].topic])
            batch: list[Any] = []
            spans: list[tuple[TP, list[Any]]] = []
            for tp, records in parts:
                r_offset = self._read_offset[tp]  # after a seek: the next offset to read
                if r_offset is not None and records[0].offset < r_offset:
                    records = [r for r in records if r.offset >= r_offset]
                    if not records:
                        continue
                if r_offset and records[0].offset - r_offset > 1:
                    log.warning(
                        "input offsets skipped by the fetch, marked done",
                        extra={"topic": tp.topic, "partition": tp.partition,
                               "after": r_offset, "first": records[0].offset},
                    )  # fmt: skip
                    await self._add_gap(tp, r_offset + 1, records[0].offset - 1)
                start = 0
                while start < len(records):
                    chunk = records[start : start + SUB_BATCH_MAX - len(batch)]
                    start += len(chunk)
                    batch += chunk
                    spans.append((tp, chunk))
                    if len(batch) >= SUB_BATCH_MAX:
                        if not await self._sub_batch(batch, spans, generation, epoch):
                            await self._read_rest_again(parts)
                            return
                        batch, spans = [], []
            if batch and not await self._sub_batch(batch, spans, generation, epoch):
                await self._read_rest_again(parts)
        finally:
            self._idle.set()

    async def _read_rest_again(self, parts: list[tuple[TP, list[Any]]]) -> None:
        """A rebalance stopped a fetch's records half-way: seek each partition back to its
        first record not handled (the rebalance's own seek covers those it keeps; this
        covers a flow stopped and resumed without one)."""
        for tp, records in parts:
            last = self._read_offset[tp]
            first = records[0].offset if last is None or last < records[0].offset else last + 1
            if first <= records[-1].offset:
                await self._read_again(tp, first)

    def _position(self, tp: TP) -> int | None:
        """Where aiokafka reads `tp` next; None when it is not assigned or its position
        awaits a reset. Read on the loop from the consumer thread's state, as faust does
        for its highwaters (`AIOKafkaConsumerThread._check_slow_processing`). The thread
        moves it in a fetch the loop waits on and in a seek it is told to do; its
        background fetches also move it past a record too large to fetch, and set it
        awaiting a reset when the next offset is out of range (the log's start moved past
        it: the records in hand are then dropped, and they are gone from the broker too;
        aiokafka logs the reset)."""
        consumer = cast(_ConsumerThread, self._thread)._ensure_consumer()
        subscription = consumer._fetcher._subscriptions.subscription
        if subscription is None or subscription.assignment is None:
            return None
        state = subscription.assignment.state_value(TopicPartition(tp.topic, tp.partition))
        if state is None or not state.has_valid_position:
            return None
        return int(state.position)

    async def _read_again(self, tp: TP, offset: int) -> None:
        """Seek `tp` back to `offset`: records fetched and not handled are read again.
        Never forward: where a seek since (a rebalance's, to the committed offset) put
        the position at or before `offset`, it stays there, or the records between would
        be stepped over."""
        position = self._position(tp)
        if position is None or position <= offset:
            return
        self.log.info(
            "fetched records not handled (paused, or a rebalance): read again",
            extra={"topic": tp.topic, "partition": tp.partition, "offset": offset},
        )
        try:
            await self.seek(tp, offset)
        except Exception as exc:  # no longer assigned: its next owner reads from the commit
            self.log.debug("seek back of %r to %d not possible: %r", tp, offset, exc)

    async def _sub_batch(
        self, batch: list[Any], spans: list[tuple[TP, list[Any]]], generation: int, epoch: int
    ) -> bool:
        if (
            not self.flow_active
            or self.app.consumer_generation_id != generation
            or self._epoch != epoch
        ):
            return False  # a rebalance began: the rest is read again after it
        durable = await self._sink.handle(batch)
        for tp, chunk in spans:
            self._read_offset[tp] = chunk[-1].offset
        self._sink.checkpoint.add(durable, spans, (generation, epoch))
        await self._settle(keep=MAX_UNSETTLED)
        # Let the event loop serve what waits between two sub-batches (the inputs gate's
        # ask and its answer, delivery reports, timers), not only after the whole fetch.
        await asyncio.sleep(0)
        return True

    async def _settle(self, keep: int) -> None:
        """Acknowledge what is durable (engine.checkpoint keeps the protocol)."""
        await self._sink.checkpoint.settle(keep, self._stamp, self._ack_records)

    def _stamp(self) -> tuple[int, int]:
        return (self.app.consumer_generation_id, self._epoch)

    async def _ack_records(self, tp: TP, records: list[Any]) -> None:
        """Mark offsets acknowledged, as faust's `ack()` does one message at a time."""
        offsets = [r.offset for r in records]
        committed = self._committed_offset[tp]
        if committed is not None and offsets[0] < committed:
            offsets = [o for o in offsets if o >= committed]
            if not offsets:
                return
        if offsets[-1] - offsets[0] + 1 != len(offsets):  # offsets skipped (compaction, markers)
            for before, after in itertools.pairwise(offsets):
                if after - before > 1:
                    await self._add_gap(tp, before + 1, after - 1)
        self._acked[tp].extend(offsets)
        self._acked_index[tp].update(offsets)
        self._n_acked += len(offsets)
        notify(self._waiting_for_ack)
        if self._commit_every is not None and self._n_acked >= self._commit_every:
            self._n_acked = 0
            await self.commit()


class Transport(driver.Transport):
    """faust's aiokafka transport with the consumer above."""

    Consumer = BatchConsumer

    def __init__(self, *args: Any, fetch_max_wait_ms: int, sink: BatchSink, **kwargs: Any):
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.sink = sink
        super().__init__(*args, **kwargs)


def install(app: faust.App, fetch_max_wait_ms: int, sink: BatchSink) -> None:
    """Give `app` the transport above, draining its input topics into `sink`."""
    app.transport = Transport(
        app.conf.broker_consumer, app, fetch_max_wait_ms=fetch_max_wait_ms, sink=sink
    )


def store_dict(table: Any) -> MutableMapping[str, Any]:
    """The plain dict a faust table's in-memory store keeps its entries in: reading it
    directly skips two Python-level mapping layers per access (measured at full ingest:
    3.5% of the worker's samples in them)."""
    data = table.data.data
    if not isinstance(data, dict):
        raise RuntimeError(f"table {table.name!r}: store is not faust's in-memory store")
    return data


def tracked_store(table: Any) -> TrackedMemoryStore:
    """The store of a table made with store=TRACKED_STORE."""
    store = table.data
    if not isinstance(store, TrackedMemoryStore):
        raise RuntimeError(f"table {table.name!r}: store is not the tracked memory store")
    return store


async def log_ends_from(app: faust.App, positions: Mapping[TP, int]) -> dict[TP, int]:
    """`BatchConsumer.log_ends_from` of the app's consumer."""
    return await cast(BatchConsumer, app.consumer).log_ends_from(positions)


def fetch_loop_age(app: faust.App) -> float | None:
    """Seconds since the consumer's fetch loop last turned; None before its first turn."""
    turned = getattr(app.consumer, "loop_turned_at", None)
    return None if turned is None else time.monotonic() - turned


def committed_offset(app: faust.App, topic: str, partition: int) -> int | None:
    """Where the group resumes on (topic, partition): the next offset to read, as faust
    holds it since the partition was assigned (None before any commit)."""
    offsets = getattr(app.consumer, "_committed_offset", {})
    return offsets.get(TP(topic, partition))


def read_offset(app: faust.App, topic: str, partition: int) -> int | None:
    """The last offset handed to the worker on (topic, partition); None before any."""
    return getattr(app.consumer, "_read_offset", {}).get(TP(topic, partition))


# -- the memory store -----------------------------------------------------------------


class TrackedMemoryStore(memory_store.Store[str, Any]):
    """faust's memory store that knows the worker's own writes (point 5 above)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._reflected: dict[TP, int] = {}  # last delivered own offset, per changelog tp
        self._recovered: set[int] = set()  # partitions restored in the current ownership
        self._active: set[int] = set()
        self.on_restored: Callable[[int], None] = lambda _n: None  # changelog records read

    def apply_changelog_batch(
        self, batch: Iterable[Any], to_key: Callable[[Any], Any], to_value: Callable[[Any], Any]
    ) -> None:
        events = list(batch)
        super().apply_changelog_batch(events, to_key, to_value)
        self.on_restored(len(events))

    def note_write(self, key: str, partition: int) -> None:
        self._key_partition[key] = partition

    def note_delete(self, key: str) -> None:
        self._key_partition.pop(key, None)

    def partition_of(self, key: str) -> int | None:
        partition = self._key_partition.get(key)
        return None if partition is None else int(partition)

    def persisted_offset(self, tp: TP) -> int | None:
        """Where faust's recovery of `tp` resumes: what the dict already reflects."""
        return self._reflected.get(tp)

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        """A changelog record the worker wrote was delivered at `offset`."""
        if tp.partition in self._recovered and offset > self._reflected.get(tp, -1):
            self._reflected[tp] = offset

    async def on_rebalance(
        self,
        assigned: set[TP],
        revoked: set[TP],
        newly_assigned: set[TP],
        generation_id: int = 0,
    ) -> None:
        topic = cast(Any, self.table).changelog_topic_name
        active = {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic}
        gone, self._active = self._active - active, active
        self._recovered &= active
        self._reflected = {tp: o for tp, o in self._reflected.items() if tp.partition in active}
        if gone:
            for key in [k for k, p in self._key_partition.items() if p in gone]:
                self.data.pop(key, None)
                self._key_partition.pop(key, None)

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        await super().on_recovery_completed(active_tps, standby_tps)
        self._recovered = {tp.partition for tp in active_tps}


TRACKED_STORE = "trackedmemory://"
faust_stores.STORES.aliases["trackedmemory"] = f"{__name__}:TrackedMemoryStore"


# -- recovery -------------------------------------------------------------------------


class Recovery(_Recovery):
    """faust's table recovery, with the input partitions sought to their committed
    offsets before they are resumed.

    When the tables are restored, faust's `Recovery.on_recovery_completed` resumes the
    input partitions and only then awaits the seek to their committed offsets. The
    fetcher is running (recovery resumed the flow to read the changelogs), so records
    fetched at the positions the consumer held before the seek reach the worker while
    the seek is under way; the seek then moves faust's read offsets under them, and the
    difference is taken for a gap that is marked done and committed over. A worker
    restarted after kill -9 skipped a stretch of input records that way (seen: a
    partition read to offset 800, then from 1,500), about one run in three of the fault
    test.

    Here the seek happens first, while the inputs are still paused (faust asks the
    client only for records of resumed partitions; `_ConsumerThread` makes sure an empty
    ask is not taken for all of them), and the inputs are resumed after it, so they are
    read from the committed offsets and nothing else. The rest of both methods is faust
    0.15.3's, in the same order."""

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        """Call when active table recovery is completed."""
        app: Any = self.app
        self.log.info("Restore complete!")
        await app.on_rebalance_complete.send()
        self._set_recovery_ended()
        callbacks = [
            asyncio.ensure_future(
                table.on_recovery_completed(
                    self.actives_for_table[table], self.standbys_for_table[table]
                )
            )
            for table in self.tables.values()
        ]
        if callbacks:
            await asyncio.wait(callbacks)
        if app.consumer_generation_id != generation_id:
            self.log.warning("Recovery rebalancing again")
            return
        await self._seek_resume_and_start(standbys_ready=not app.assignor.assigned_standbys())

    async def _resume_streams(self, generation_id: int = 0) -> None:
        """Resume the streams of an app without tables (faust's path for those)."""
        app: Any = self.app
        await app.on_rebalance_complete.send()
        if app.consumer_generation_id != generation_id:
            self.log.warning("Recovery rebalancing again")
            return
        await self._seek_resume_and_start(standbys_ready=True)

    async def _seek_resume_and_start(self, standbys_ready: bool) -> None:
        """Seek the inputs to their committed offsets, then resume them and the flow."""
        app: Any = self.app
        consumer = app.consumer
        assignment = consumer.assignment()
        if assignment:
            self.log.info("Seek stream partitions to committed offsets.")
            await self._wait(consumer.perform_seek(), timeout=app.conf.broker_request_timeout)
        # Resumed only now: nothing is read from the positions held before the seek.
        consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})
        self.completed.set()
        app.flow_control.resume()
        consumer.resume_flow()
        await app._fetcher.maybe_start()
        self.tables.on_actives_ready()
        if standbys_ready:
            self.tables.on_standbys_ready()
        app.on_rebalance_end()
        self.log.info("Worker ready")


class TableManager(_TableManager):
    """faust's table manager with the `Recovery` above."""

    @property
    def recovery(self) -> _Recovery:
        if self._recovery is None:
            self._recovery = Recovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


# -- the start-up check ---------------------------------------------------------------

# (owner, name): methods, properties and class attributes this module uses or overrides.
_METHODS: tuple[tuple[type, str], ...] = (
    (faust_consumer.Consumer, "_drain_messages"),
    (faust_consumer.Consumer, "_wait_next_records"),
    (faust_consumer.Consumer, "_add_gap"),
    (faust_consumer.Consumer, "_to_message"),
    (faust_consumer.Consumer, "_new_offset"),
    (faust_consumer.Consumer, "wait_empty"),
    (faust_consumer.Consumer, "perform_seek"),
    (faust_consumer.Consumer, "on_partitions_revoked"),
    (faust_consumer.Consumer, "_is_changelog_tp"),
    (driver.Consumer, "_new_consumer_thread"),
    (driver.AIOKafkaConsumerThread, "_create_worker_consumer"),
    (driver.AIOKafkaConsumerThread, "_highwaters"),
    (driver.AIOKafkaConsumerThread, "_ensure_consumer"),
    (driver.AIOKafkaConsumerThread, "getmany"),
    (_Recovery, "_set_recovery_ended"),
    (_Recovery, "_wait"),
    (_Recovery, "on_recovery_completed"),
    (_Recovery, "_resume_streams"),
    (_TableManager, "recovery"),
    (_Recovery, "_add"),
    (memory_store.Store, "on_recovery_completed"),
    (memory_store.Store, "apply_changelog_batch"),
    (memory_store.Store, "persisted_offset"),
    (_TableManager, "_recovery"),
    (faust.App, "_fetcher"),
    (SubscriptionState, "subscription"),  # BatchConsumer._position
    (Assignment, "state_value"),
    (TopicPartitionState, "has_valid_position"),
    (TopicPartitionState, "position"),
)
# Instance attributes faust declares on its Consumer classes and this module reads/writes.
_CONSUMER_ATTRIBUTES = (
    "_acked",
    "_acked_index",
    "_read_offset",
    "_committed_offset",
    "_n_acked",
    "_waiting_for_ack",
    "_buffered_partitions",
    "_commit_every",
    "_thread",
)
# Assignments in a constructor's source that this module relies on.
_ASSIGNED_IN_INIT: tuple[tuple[Any, str], ...] = (
    (AIOKafkaConsumer.__init__, "self._fetch_max_wait_ms ="),
    (AIOKafkaConsumer.__init__, "self._client ="),
    (AIOKafkaConsumer.start, "self._fetcher = Fetcher("),
    (Fetcher.__init__, "self._subscriptions = subscriptions"),
    (memory_store.Store.__post_init__, "self.data: MutableMapping = {}"),
    (memory_store.Store.__post_init__, "self._key_partition"),
    (_Recovery._add, "table.persisted_offset(tp)"),
)


def missing() -> list[str]:
    """What this module uses of faust/aiokafka and the installed versions lack."""
    gone = [
        f"{owner.__module__}.{owner.__qualname__}.{name}"
        for owner, name in _METHODS
        if not hasattr(owner, name)
    ]
    declared: set[str] = set()
    for klass in driver.Consumer.__mro__:  # faust's Consumer, ThreadDelegateConsumer
        declared.update(getattr(klass, "__annotations__", {}))
    gone += [f"faust Consumer.{name}" for name in _CONSUMER_ATTRIBUTES if name not in declared]
    for function, assignment in _ASSIGNED_IN_INIT:
        try:
            source = inspect.getsource(function)
        except (OSError, TypeError):
            source = ""
        if assignment not in source:
            gone.append(f"{function.__qualname__}: {assignment.rstrip(' =')}")
    if not hasattr(faust_consumer, "CONSUMER_FETCHING"):
        gone.append("faust.transport.consumer.CONSUMER_FETCHING")
    return gone


def check() -> None:
    """Fail at start-up, naming each private name that is gone, when faust or aiokafka
    changed under the overrides above."""
    gone = missing()
    if gone:
        raise RuntimeError(
            "this worker overrides faust/aiokafka internals that the installed versions "
            f"no longer have: {', '.join(gone)}. Install the versions pyproject.toml pins."
        )
