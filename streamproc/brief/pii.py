"""The brief's PII policy on every string of the published brief, ids included.

The deterministic brief writes ids as the events carry them (device, rule, alert, event
and account ids in the timeline, the facts and the alert list), and producers put what
they have into ids: a device named by its owner's email, a rule id holding a card number.
Every id value the events carry besides their own keys (each schema's id_text_fields:
device, session, rule, alert and transaction ids) is scanned with the case's own PII
detector (the values of its PII fields, and the shapes of cards, IBANs, emails, phones
and IPs); each one that holds personal data is rewritten by BRIEF_PII wherever the brief
prints it: masked (the masked form of each part), redacted (the entity's name in
brackets) or, for case tools allowed to show it, restored (left as is).

The join keys are left as delivered (JOIN_KEYS: the brief, case, account, alert and event
ids a case tool joins on): a sequential id such as "alr-s5986782-000010" passes the card
check by chance one time in ten, and masking it would cut the brief from its alert. A
producer that puts personal data into those keys is outside the input contract
(docs/contract.md). A brief whose ids hold no personal data is returned unchanged.
"""

from __future__ import annotations

from typing import Any

from streamproc.brief.model import CaseBrief
from streamproc.config import BriefPII
from streamproc.domain.case import Case
from streamproc.privacy.detect import find_all
from streamproc.privacy.redact import Redactor, mask

JOIN_KEYS = frozenset(
    {"brief_id", "case_id", "account_id", "alert_ids", "evidence_event_ids", "event_id"}
)


def protect(brief: CaseBrief, case: Case, redactor: Redactor, policy: BriefPII) -> CaseBrief:
    if policy is BriefPII.RESTORED:
        return brief
    rewrites = _rewrites(case, redactor, policy)
    if not rewrites:
        return brief
    order = sorted(rewrites, key=len, reverse=True)  # an id inside a longer one: longest first

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            for raw in order:
                if raw in node:
                    node = node.replace(raw, rewrites[raw])
            return node
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, dict):
            return {k: v if k in JOIN_KEYS else walk(v) for k, v in node.items()}
        return node

    return CaseBrief.model_validate(walk(brief.model_dump(mode="json")))


def _rewrites(case: Case, redactor: Redactor, policy: BriefPII) -> dict[str, str]:
    kinds = {"transaction": case.transactions, "signal": case.signals, "alert": case.alerts}
    known, regions = redactor.known_values(kinds)
    out: dict[str, str] = {}
    for kind, records in kinds.items():
        fields = redactor.schemas[kind].id_text_fields
        for record in records:
            for name in fields:
                value = record.get(name)
                values = value if isinstance(value, list) else [value]
                for v in values:
                    if isinstance(v, str) and v and v not in out:
                        out[v] = _safe(v, known, regions, policy)
    return {raw: safe for raw, safe in out.items() if safe != raw}


def _safe(value: str, known: Any, regions: tuple[str, ...], policy: BriefPII) -> str:
    spans = find_all(value, known, regions, ids=True)
    for span in reversed(spans):
        shown = mask(span.entity, span.text) if policy is BriefPII.MASKED else f"[{span.entity}]"
        value = value[: span.start] + shown + value[span.end :]
    return value
