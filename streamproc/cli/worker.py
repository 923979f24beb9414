"""`streamproc worker`: check the topology, then run the faust worker until stopped."""

from __future__ import annotations

import logging
from typing import Any

import faust

from streamproc.cli.kafkaio import make_codec
from streamproc.config import LLMProvider, LogFormat, Settings
from streamproc.engine.app import CaseWorker
from streamproc.engine.tables import changelog_topics
from streamproc.errors import TopologyError
from streamproc.kafka import security
from streamproc.kafka.admin import admin_client, broker_count, check_copartitioned, partition_counts
from streamproc.llm.prices import configured_price
from streamproc.network.entities import EntityHasher
from streamproc.ops import logs
from streamproc.ops.http import http_service
from streamproc.ops.metrics import Metrics

log = logging.getLogger("streamproc.worker")


def check_topology(settings: Settings) -> tuple[int, int]:
    """(partitions, replication) for internal topics; raises TopologyError saying what to fix."""
    admin = admin_client(settings)
    counts = partition_counts(admin)
    t = settings.topics
    linked = settings.entity_key_value() is not None
    internal = [t.settle, *changelog_topics(settings)]
    if linked:
        internal += [t.entity_index, t.entity_links]
    n = check_copartitioned(counts, t.inputs, internal=internal)
    needed = (t.briefs, t.dlq, t.settle, *((t.entity_index, t.entity_links) if linked else ()))
    missing = [name for name in needed if name not in counts]
    if missing:
        raise TopologyError(
            f"topic(s) missing: {', '.join(missing)}. Create them with `streamproc topics apply`."
        )
    return n, min(3, broker_count(admin))


def announce_links(settings: Settings) -> None:
    key = settings.entity_key_value()
    if key is None:
        log.warning("STREAMPROC_ENTITY_KEY is unset: linked accounts are off (briefs list none)")
        return
    EntityHasher(key)  # a short key fails here, naming the setting
    log.info(
        "linked accounts on: entity index %s, answers %s, a case waits up to %d ms",
        settings.topics.entity_index,
        settings.topics.entity_links,
        settings.links_max_wait_ms,
    )


class _Worker(faust.Worker):
    """faust's Worker with our log format, and without its terminal spinner: at log levels
    of WARN and above the spinner puts the root logger at DEBUG, so every debug call of
    aiokafka and faust builds a log record per message (measured: about 10% of worker CPU)."""

    def __init__(self, *args: Any, log_format: LogFormat, **kwargs: Any) -> None:
        self.log_format = log_format
        super().__init__(*args, **kwargs)

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None
        logs.configure(logging.getLevelName(level), self.log_format.value)


def run_worker(settings: Settings) -> int:
    logs.configure(settings.log_level.value, settings.log_format.value)
    # Settings first: a wrong one fails before any network call.
    announce_llm(settings)
    announce_links(settings)
    auth = security.resolve(settings)
    security.faust_credentials(auth)  # loads the TLS files now: a bad one fails here
    partitions, replication = check_topology(settings)
    log.info(
        "Kafka at %s (%s); %d co-partitioned input partitions; briefs to %s; HTTP on :%d",
        settings.kafka_bootstrap,
        auth.describe(),
        partitions,
        settings.topics.briefs,
        settings.http_port,
    )
    metrics = Metrics()
    codec = make_codec(settings, registry_inline=False)
    case_worker = CaseWorker(settings, codec, metrics, partitions, replication)
    worker = _Worker(
        case_worker.app,
        http_service(case_worker.readiness, metrics, settings.http_port),
        loglevel=settings.log_level.value,
        log_format=settings.log_format,
        quiet=True,
        redirect_stdouts=False,
    )
    worker.execute_from_commandline()  # returns only through SystemExit
    return 0


_VARIANT_KEYS = {
    "own": "its own (api_key_file)",
    "primary": "the primary's (same provider and endpoint)",
    "none": "none (another endpoint, and no api_key_file of its own)",
}


def announce_variants(settings: Settings) -> None:
    """Each variant, where it goes and which API key it sends (never the key)."""
    for name, variant in (("shadow", settings.llm_shadow), ("canary", settings.llm_canary)):
        if variant is None:
            continue
        base_url, model = settings.for_variant(variant).llm_endpoint()
        log.info(
            "%s variant: model %s at %s; API key: %s",
            name,
            model,
            base_url,
            _VARIANT_KEYS[settings.variant_api_key(variant)],
        )


def announce_llm(settings: Settings) -> None:
    """Say how briefs will be written; ConfigError when the LLM settings are incomplete."""
    if settings.llm_provider is LLMProvider.NONE:
        log.info(
            "STREAMPROC_LLM_PROVIDER is unset or 'none': every brief is the "
            "deterministic brief (method=FALLBACK)."
        )
        return
    base_url, model = settings.llm_endpoint()
    key = "set" if settings.llm_api_key_value() else "not set"
    log.info(
        "briefs by %s model %s at %s (API key %s); the deterministic brief is the floor "
        "and the fallback.",
        settings.llm_provider.value,
        model,
        base_url,
        key,
    )
    announce_variants(settings)
    price = configured_price(settings)
    if price is None:
        log.warning(
            "LLM cost cannot be estimated: no price for model %s "
            "(streamproc_llm_cost_usd_total stays 0 and streamproc_llm_cost_estimated is 0). "
            "Set STREAMPROC_LLM_PRICE_PROMPT_PER_1K and _COMPLETION_PER_1K, or name a price "
            "list in STREAMPROC_LLM_PRICES_FILE.",
            model,
        )
    else:
        log.info(
            "LLM cost estimated at %s / %s USD per 1,000 prompt / completion tokens (%s).",
            f"{price.prompt_per_1k:g}",
            f"{price.completion_per_1k:g}",
            price.origin,
        )
