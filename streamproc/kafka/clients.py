"""librdkafka (confluent-kafka) client configs built from Settings."""

from __future__ import annotations

from typing import Any

from streamproc.config import Settings
from streamproc.kafka import security


def base_config(settings: Settings) -> dict[str, Any]:
    """Bootstrap servers plus the SASL/TLS settings every librdkafka client needs."""
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        **security.librdkafka_config(security.resolve(settings)),
    }


def producer_config(settings: Settings) -> dict[str, Any]:
    # murmur2 is the Java client's and aiokafka's partitioner; librdkafka's default
    # (CRC32) would put an account on another partition than faust expects.
    return {
        **base_config(settings),
        "partitioner": "murmur2_random",
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.max.bytes": 4 * 1024 * 1024,  # inputs allow 2 MiB records (topics.yaml)
    }


def admin_config(settings: Settings) -> dict[str, Any]:
    return base_config(settings)
