"""Analysts' feedback joined with the provenance of the brief it is about.

Each published brief leaves its provenance in its case's state entry (`remember`): the
method, provider, model, prompt version and variant that wrote it, the risk level and
reason codes it published, how many key facts it had. Feedback on
`fraud.brief-feedback.v1` arrives on the same partition (keyed by account_id) and is
counted against that provenance (`observe`), in metrics whose labels are all bounded.
Feedback about a brief that is not in state (never published here, or its case retired
after CASE_RETAIN_H) is counted with provenance "unknown"; the record itself stays on
its topic for `streamproc feedback export`. Nothing of the analyst's free text, nor any
id, reaches a label or a log line.
"""

from __future__ import annotations

from typing import Any

from streamproc.brief.model import CaseBrief, RiskLevel
from streamproc.ops.metrics import Metrics

BRIEFS_KEPT = 10  # provenance of a case's latest briefs
UNKNOWN = "unknown"  # provenance of a brief not in state
NONE = "none"  # no model or prompt: a deterministic brief written without a model call


def remember(case: dict[str, Any], brief: CaseBrief) -> None:
    """Keep the provenance of a published brief in its case's state entry."""
    gen = brief.generation
    briefs: dict[str, Any] = case.setdefault("briefs", {})
    briefs[brief.brief_id] = {
        "version": brief.brief_version,
        "method": gen.method.value,
        "provider": gen.provider or "",
        "model": gen.model or "",
        "prompt_version": gen.prompt_version or "",
        "variant": gen.variant,
        "risk_level": brief.risk_level.value,
        "reason_codes": [code.value for code in brief.reason_codes],
        "key_facts": len(brief.key_facts),
    }
    for old in list(briefs)[:-BRIEFS_KEPT]:  # dicts keep insertion order
        del briefs[old]


def provenance(case: dict[str, Any] | None, brief_id: str) -> dict[str, Any] | None:
    """What state holds of the brief `brief_id`, or None."""
    if case is None:
        return None
    found: dict[str, Any] | None = case.get("briefs", {}).get(brief_id)
    return found


def agrees(feedback: dict[str, Any], published_level: str) -> bool | None:
    """Did the analyst agree with the published risk level? Their own level when they
    gave one; else CONFIRMED_FRAUD agrees with HIGH or CRITICAL and FALSE_POSITIVE with
    LOW or MEDIUM. INCONCLUSIVE and ESCALATED say neither (None)."""
    assessed = feedback.get("risk_level_assessed")
    if assessed is not None:
        return bool(assessed == published_level)
    high = RiskLevel(published_level).rank >= RiskLevel.HIGH.rank
    disposition = feedback["disposition"]
    if disposition == "CONFIRMED_FRAUD":
        return high
    if disposition == "FALSE_POSITIVE":
        return not high
    return None


def observe(metrics: Metrics, feedback: dict[str, Any], brief: dict[str, Any] | None) -> None:
    """Count one feedback record against the brief's provenance (None: unknown brief)."""
    if brief is None:
        metrics.feedback_received.labels(UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN).inc()
        return
    method, variant = brief["method"], brief["variant"]
    labels = (method, brief["model"] or NONE, brief["prompt_version"] or NONE, variant)
    metrics.feedback_received.labels(*labels).inc()
    if feedback.get("usefulness") is not None:
        metrics.feedback_usefulness.labels(*labels).observe(feedback["usefulness"])
    metrics.feedback_dispositions.labels(
        brief["risk_level"], feedback["disposition"], method, variant
    ).inc()
    agreed = agrees(feedback, brief["risk_level"])
    if agreed is not None:
        metrics.feedback_agreement.labels(*labels, "true" if agreed else "false").inc()
    published = set(brief["reason_codes"])
    for change, codes in (
        ("added", set(feedback.get("reason_codes_added") or ()) - published),
        ("removed", set(feedback.get("reason_codes_removed") or ()) & published),
    ):
        for code in sorted(codes):
            metrics.feedback_reason_codes.labels(change, code, method, variant).inc()
    flagged = {i for i in feedback.get("facts_flagged") or () if i < brief["key_facts"]}
    metrics.feedback_facts_flagged.labels(method, variant).observe(len(flagged))
