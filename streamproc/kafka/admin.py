"""Topic administration: idempotent apply of topics/ and the co-partitioning check."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported without __all__
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from streamproc.config import Settings
from streamproc.contracts.topics import TopicSpec
from streamproc.errors import BrokerError, TopologyError
from streamproc.kafka.clients import admin_config

TIMEOUT_S = 15.0


@dataclass(frozen=True)
class ApplyResult:
    created: list[str]
    existing: list[str]
    warnings: list[str]


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient(admin_config(settings))


def partition_counts(admin: AdminClient) -> dict[str, int]:
    """Topic → partition count for every topic on the cluster."""
    try:
        md = admin.list_topics(timeout=TIMEOUT_S)
    except KafkaException as exc:
        raise BrokerError(f"cannot reach Kafka for metadata: {exc.args[0].str()}") from exc
    return {name: len(t.partitions) for name, t in md.topics.items() if t.error is None}


def broker_count(admin: AdminClient) -> int:
    return max(1, len(admin.list_topics(timeout=TIMEOUT_S).brokers))


def apply_topics(admin: AdminClient, specs: Iterable[TopicSpec]) -> ApplyResult:
    """Create missing topics; never change partition counts of existing ones (warn instead)."""
    specs = list(specs)
    existing = partition_counts(admin)
    rf_cap = broker_count(admin)
    created, kept, warnings = [], [], []
    to_create = [
        NewTopic(s.name, s.partitions, min(s.replication_factor, rf_cap), config=s.config)
        for s in specs
        if s.name not in existing
    ]
    if to_create:
        for name, fut in admin.create_topics(to_create, request_timeout=TIMEOUT_S).items():
            try:
                fut.result()
                created.append(name)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise BrokerError(f"cannot create topic {name}: {exc.args[0].str()}") from exc
                kept.append(name)
    for spec in specs:
        if spec.name in existing:
            kept.append(spec.name)
            if existing[spec.name] != spec.partitions:
                warnings.append(
                    f"{spec.name} has {existing[spec.name]} partitions, "
                    f"declared {spec.partitions}; "
                    "left as is (changing it would move accounts between partitions)"
                )
            warnings.extend(_align_config(admin, spec))
    return ApplyResult(created=created, existing=kept, warnings=warnings)


def _align_config(admin: AdminClient, spec: TopicSpec) -> list[str]:
    if not spec.config:
        return []
    resource = ConfigResource("topic", spec.name)
    try:
        current = admin.describe_configs([resource])[resource].result(timeout=TIMEOUT_S)
    except KafkaException as exc:
        return [f"{spec.name}: cannot read configs ({exc.args[0].str()})"]
    drift = {k: v for k, v in spec.config.items() if k in current and current[k].value != v}
    if not drift:
        return []
    resource = ConfigResource(
        "topic",
        spec.name,
        incremental_configs=[
            ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in drift.items()
        ],
    )
    try:
        admin.incremental_alter_configs([resource])[resource].result(timeout=TIMEOUT_S)
    except KafkaException as exc:
        return [
            f"{spec.name}: configs {sorted(drift)} differ and cannot be altered "
            f"({exc.args[0].str()})"
        ]
    return []


def check_copartitioned(
    counts: dict[str, int], inputs: Iterable[str], internal: Iterable[str] = ()
) -> int:
    """The inputs' shared partition count, or TopologyError saying what to fix."""
    inputs = list(inputs)
    missing = [t for t in inputs if t not in counts]
    if missing:
        raise TopologyError(
            f"input topic(s) missing: {', '.join(missing)}. "
            "Create them with `streamproc topics apply`."
        )
    by_count = {t: counts[t] for t in inputs}
    if len(set(by_count.values())) != 1:
        detail = ", ".join(f"{t}={n}" for t, n in by_count.items())
        raise TopologyError(
            f"input topics are not co-partitioned ({detail}). All must have the same "
            "partition count and be keyed by account_id; repartition upstream before starting."
        )
    n = next(iter(by_count.values()))
    wrong = {t: counts[t] for t in internal if t in counts and counts[t] != n}
    if wrong:
        detail = ", ".join(f"{t}={c}" for t, c in wrong.items())
        raise TopologyError(
            f"internal topics must have {n} partitions like the inputs, found {detail}. "
            "To recreate them without losing cases: stop every worker; delete them; reset "
            "the consumer group's offsets on the input topics to at least LOOKBACK_H before "
            "the oldest open case (kafka-consumer-groups --reset-offsets --to-datetime); run "
            "`streamproc topics apply`. State is then rebuilt by reading the inputs again. "
            "Deleting them alone loses every pending case: the committed offsets stay."
        )
    return n
