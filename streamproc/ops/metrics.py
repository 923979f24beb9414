"""All Prometheus metrics of the worker, on a registry passed in (never the global one).

Labels are bounded: topic names, reason classes, methods. Never a case, account or event id.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from streamproc import __version__

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events_consumed = Counter(
            "streamproc_events_consumed", "Input records consumed, by topic.", ["topic"], registry=r
        )
        self.events_rejected = Counter(
            "streamproc_events_rejected",
            "Input records sent to the DLQ, by topic and reason class.",
            ["topic", "reason"],
            registry=r,
        )
        self.events_duplicate = Counter(
            "streamproc_events_duplicate",
            "Input events ignored as duplicates of an event_id.",
            ["topic"],
            registry=r,
        )
        self.events_expired = Counter(
            "streamproc_events_expired",
            "Input events older than the lookback behind the account's newest event.",
            ["topic"],
            registry=r,
        )
        self.dlq_published = Counter(
            "streamproc_dlq_published", "Records written to the dead-letter topic.", registry=r
        )
        self.cases_opened = Counter(
            "streamproc_cases_opened", "Cases opened by a first alert.", registry=r
        )
        self.briefs_published = Counter(
            "streamproc_briefs_published",
            "Briefs published, by generation method.",
            ["method"],
            registry=r,
        )
        self.briefs_unchanged = Counter(
            "streamproc_briefs_unchanged",
            "Settled cases whose content equals the last brief (nothing republished).",
            registry=r,
        )
        self.detector_failures = Counter(
            "streamproc_detector_failures",
            "Detectors that raised on a case (a bug; the brief lists it as a data gap).",
            ["detector"],
            registry=r,
        )
        # Analysts' feedback, by the provenance of the brief it is about (engine/feedback.py).
        provenance = ["method", "model", "prompt_version", "variant"]
        self.feedback_received = Counter(
            "streamproc_feedback_received",
            "Analysts' feedback on briefs, by the brief's provenance (all 'unknown' when "
            "the brief is not, or no longer, in state).",
            provenance,
            registry=r,
        )
        self.feedback_usefulness = Histogram(
            "streamproc_feedback_usefulness",
            "Usefulness analysts gave a brief, 1 (none) to 5.",
            provenance,
            buckets=(1, 2, 3, 4, 5),
            registry=r,
        )
        self.feedback_dispositions = Counter(
            "streamproc_feedback_dispositions",
            "Analysts' dispositions, by the risk level the brief published.",
            ["risk_level", "disposition", "method", "variant"],
            registry=r,
        )
        self.feedback_agreement = Counter(
            "streamproc_feedback_agreement",
            "Feedback that agrees (or not) with the published risk level: the analyst's "
            "own level, else CONFIRMED_FRAUD for HIGH/CRITICAL, FALSE_POSITIVE for LOW/MEDIUM.",
            [*provenance, "agrees"],
            registry=r,
        )
        self.feedback_reason_codes = Counter(
            "streamproc_feedback_reason_codes",
            "Reason codes analysts added to or removed from a published brief.",
            ["change", "code", "method", "variant"],
            registry=r,
        )
        self.feedback_facts_flagged = Histogram(
            "streamproc_feedback_facts_flagged",
            "Key facts an analyst flagged wrong or unsupported, per feedback.",
            ["method", "variant"],
            buckets=(0, 1, 2, 3, 5, 10),
            registry=r,
        )
        self.brief_latency = Histogram(
            "streamproc_brief_latency_seconds",
            "Alert consumed → brief published, settle delay included.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.partitions_owned = Gauge(
            "streamproc_partitions_owned",
            "1 for each input partition this worker owns (actively), 0 for the others.",
            ["partition"],
            registry=r,
        )
        self.links_messages = Counter(
            "streamproc_links_messages_total",
            "Entity index messages sent: s (sighting), q (ask), d (decision), answer.",
            ["kind"],
            registry=r,
        )
        self.links_timed_out = Counter(
            "streamproc_links_timed_out_total",
            "Entities a case asked the index about and was briefed without an answer for "
            "(LINKS_MAX_WAIT_MS passed; the brief says so in its data gaps).",
            registry=r,
        )
        self.links_wait = Histogram(
            "streamproc_links_wait_seconds",
            "A case's first ask to the entity index → its answers in (or the wait ended).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cases_pending = Gauge(
            "streamproc_cases_pending",
            "Cases waiting for their settle delay on this worker.",
            registry=r,
        )
        self.state_size = Gauge(
            "streamproc_state_entries",
            "Entries held in each state table on this worker.",
            ["table"],
            registry=r,
        )
        self.state_expired = Counter(
            "streamproc_state_expired",
            "State entries removed: retired cases, windows of idle accounts, entity index "
            "entries not written for their lookback.",
            ["table"],
            registry=r,
        )
        self.state_restored = Counter(
            "streamproc_state_restored_records",
            "Changelog records read back into state (start-up, and partitions gained in a "
            "rebalance; a partition kept through a rebalance reads none), by table.",
            ["table"],
            registry=r,
        )
        self.state_trimmed = Counter(
            "streamproc_state_trimmed",
            "State values over their changelog's record limit: trimmed (oldest events or "
            "alert text left out, said in the brief's data gaps) or, when they cannot be, "
            "dropped; by table.",
            ["table", "outcome"],
            registry=r,
        )
        self.processing_errors = Counter(
            "streamproc_processing_errors",
            "Unexpected errors while handling a record (record dead-lettered), by stage.",
            ["stage"],
            registry=r,
        )
        self.ready = Gauge("streamproc_ready", "1 when /readyz answers ready.", registry=r)
        self.llm_duration = Histogram(
            "streamproc_llm_request_duration_seconds",
            "One case's model call, retries and repair included.",
            ["provider", "model", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.llm_tokens = Counter(
            "streamproc_llm_tokens",
            "Tokens used, by type and variant (primary, canary, shadow).",
            ["type", "variant"],
            registry=r,
        )
        self.llm_cost = Counter(
            "streamproc_llm_cost_usd",
            "Estimated LLM cost from the model's price, by variant (0 without a price).",
            ["variant"],
            registry=r,
        )
        self.shadow_briefs = Counter(
            "streamproc_shadow_briefs",
            "Briefs of the shadow variant, published to the shadow topic only, by method.",
            ["method"],
            registry=r,
        )
        self.shadow_skipped = Counter(
            "streamproc_shadow_skipped",
            "Cases the shadow variant did not brief: too many shadow briefs under way.",
            registry=r,
        )
        self.llm_cost_estimated = Gauge(
            "streamproc_llm_cost_estimated",
            "1 when the model's price is known and cost is estimated, else 0.",
            registry=r,
        )
        self.llm_errors = Counter(
            "streamproc_llm_errors",
            "Model calls that failed, by kind and variant.",
            ["kind", "variant"],
            registry=r,
        )
        self.llm_fallbacks = Counter(
            "streamproc_llm_fallbacks",
            "Briefs that fell back to the deterministic brief, by reason and variant (a "
            "shadow's fallbacks never reach analysts).",
            ["reason", "variant"],
            registry=r,
        )
        self.llm_retries = Counter("streamproc_llm_retries", "Retried model requests.", registry=r)
        self.llm_circuit = Gauge(
            "streamproc_llm_circuit_state", "0 closed, 1 half-open, 2 open.", registry=r
        )
        self.llm_in_flight = Gauge(
            "streamproc_llm_in_flight",
            "Cases being briefed by the model now (up to twice LLM_MAX_CONCURRENCY; calls "
            "in flight are at most LLM_MAX_CONCURRENCY).",
            registry=r,
        )
        self.llm_queue = Gauge(
            "streamproc_llm_queue_depth",
            "Due cases queued before they start (twice LLM_MAX_CONCURRENCY under way).",
            registry=r,
        )
        self.llm_abandoned = Counter(
            "streamproc_llm_calls_abandoned",
            "Model calls whose answer was not used: their partition moved in a rebalance, "
            "or the worker stopped before they finished (the tokens are paid again).",
            ["reason"],
            registry=r,
        )
        self.llm_cache_hits = Counter(
            "streamproc_llm_cache_hits",
            "Briefs made from a stored answer (replay, restart).",
            registry=r,
        )
        self.guardrail_violations = Counter(
            "streamproc_guardrail_violations",
            "Interventions of the guardrails, by check.",
            ["check"],
            registry=r,
        )
        self.claims_cut = Counter(
            "streamproc_claims_cut",
            "Sentences of model briefs the claim checker cut, by the kind of the claim the "
            "events did not support (amount, count, kind, novelty, country, merchant, span, "
            "typology).",
            ["kind"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "streamproc_consumer_lag",
            "Records on assigned input partitions not yet read (high watermark - position).",
            ["topic"],
            registry=r,
        )
        self.llm_budget_tokens = Gauge(
            "streamproc_llm_daily_token_budget",
            "Tokens per UTC day the model may use (0 = no budget).",
            registry=r,
        )
        self.llm_budget_spent = Gauge(
            "streamproc_llm_tokens_spent_today",
            "Tokens spent since 00:00 UTC against the daily budget.",
            registry=r,
        )
        self.build_info = Gauge(
            "streamproc_build_info", "Always 1; labels say what runs.", ["version"], registry=r
        )
        self.build_info.labels(__version__).set(1)
        self.pii_redactions = Counter(
            "streamproc_pii_redactions",
            "PII entities replaced before inference, by type.",
            ["entity"],
            registry=r,
        )
