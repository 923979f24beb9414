"""The faust app and the state tables of a worker, as the worker is built.

faust keeps group membership, the co-partitioning assignor, changelog recovery and the
commit of acknowledged offsets; input records never go through its per-message path
(engine/internals.py says why). The tables are faust tables in the tracked memory store,
seen through write-back caches bounded by their changelogs' record limit.
"""

from __future__ import annotations

from collections.abc import Callable

import faust

from streamproc.config import Settings
from streamproc.contracts.topics import changelog_limit, load_topics
from streamproc.domain import bounds
from streamproc.engine import internals
from streamproc.engine.state import ConfluentChangelog, Shrink, WriteBackTable
from streamproc.kafka import security
from streamproc.ops.metrics import Metrics

TABLES = ("windows", "cases", "pending", "llm_cache", "entities")
# How a value over its changelog's record limit is trimmed (a table without: not kept).
SHRINK: dict[str, Shrink] = {"windows": bounds.shrink_window, "cases": bounds.shrink_case}
DLQ_MAX_BYTES = 4 * 1024 * 1024


def changelog_topics(settings: Settings) -> list[str]:
    return [f"{settings.app_id}-{name}-changelog" for name in TABLES]


def faust_app(settings: Settings, partitions: int, replication: int) -> faust.App:
    return faust.App(
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
        consumer_group_instance_id=settings.group_instance_id,
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


def state_tables(
    app: faust.App,
    changelog: ConfluentChangelog,
    metrics: Metrics,
    partitions: int,
    on_trim: Callable[[str], Callable[[str], None]],
) -> tuple[dict[str, WriteBackTable], dict[str, internals.TrackedMemoryStore]]:
    """Each table's write-back cache and its store, by table name."""
    tables, stores, declared = {}, {}, load_topics()
    for name in TABLES:
        table = app.Table(name, partitions=partitions)
        store = internals.tracked_store(table)
        tables[name] = WriteBackTable(
            table,
            changelog,
            internals.store_dict(table),
            tracker=store,
            max_bytes=changelog_limit(name, declared),
            shrink=SHRINK.get(name),
            on_trim=on_trim(name),
        )
        store.on_restored = metrics.state_restored.labels(name).inc
        stores[name] = store
    return tables, stores
