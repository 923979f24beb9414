"""The prompt for a case: versioned text from prompts/, and the case as compact JSON data.

The model sees redacted records only, with event ids replaced by short references
(E1, E2, ...) that are mapped back before validation. The case is compacted to a token
budget: alerts, the transactions they name and the events behind the deterministic
findings always go in; then the most recent other events while the budget lasts; the
rest is summarised as aggregates. Untrusted text is inside a JSON document, so it
cannot end the data block or pose as instructions.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from streamproc import data
from streamproc.brief.model import CaseBrief
from streamproc.errors import ConfigError

PROMPT_DIR = data.path("prompts")
CHARS_PER_TOKEN = 4  # a conservative estimate for JSON-heavy English text
Record = dict[str, Any]
KINDS = ("alert", "transaction", "signal")


@dataclass(frozen=True)
class PromptTemplate:
    version: str
    system: str
    user: str


@dataclass(frozen=True)
class Prompt:
    version: str
    system: str
    user: str
    refs: dict[str, str]  # short reference → event_id
    shown_refs: list[str]  # the references of the events in the prompt, in order
    estimated_tokens: int
    events_included: int
    events_total: int


def load_template(version: str = "brief-v1", prompt_dir: Path = PROMPT_DIR) -> PromptTemplate:
    path = prompt_dir / f"{version}.yaml"
    try:
        doc = yaml.safe_load(path.read_text())
        template = PromptTemplate(str(doc["version"]), str(doc["system"]), str(doc["user"]))
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise ConfigError(f"prompt {path} cannot be loaded: {exc}") from exc
    if template.version != version or "{case_json}" not in template.user:
        raise ConfigError(
            f"prompt {path}: version must be {version!r} and user must hold {{case_json}}"
        )
    return template


def estimate_tokens(text: str) -> int:
    return len(text) // CHARS_PER_TOKEN + 1


def build_prompt(
    template: PromptTemplate,
    redacted: Mapping[str, Iterable[Record]],
    floor: CaseBrief,
    *,
    max_tokens: int,
    scrub: Callable[[str], str] = str,
    alias: Callable[[str, str], str] | None = None,
) -> Prompt:
    """The prompt for a case whose records (by kind) are already redacted. `scrub`
    redacts the deterministic assessment's texts, which are written from the raw
    records (ids included) and so may carry what a producer put in an id. `alias`
    (Vault.alias): the placeholder of a linked account's id."""
    records = {
        k: sorted(redacted.get(k, ()), key=lambda r: (r["occurred_at"], r["event_id"]))
        for k in KINDS
    }
    refs = {
        r["event_id"]: f"E{i}"
        for i, r in enumerate((r for k in KINDS for r in records[k]), start=1)
    }
    must = _must_include(records, floor)
    fixed = {
        "assessment": _assessment(floor, scrub, alias or _numbered()),
        "data_gaps": [scrub(gap) for gap in floor.data_gaps],
    }
    budget_chars = max_tokens * CHARS_PER_TOKEN - len(template.system) - len(template.user) - 2_000
    chosen = _choose(records, refs, must, budget_chars - len(_dumps(fixed)))
    rest = [r for k in ("transaction", "signal") for r in records[k] if r["event_id"] not in chosen]
    events = [_compact(k, r, refs) for k in KINDS for r in records[k] if r["event_id"] in chosen]
    data = {**fixed, "events": events, "not_shown": _aggregate(rest)}
    user = template.user.replace("{case_json}", _inert(_dumps(data)))
    total = sum(len(v) for v in records.values())
    return Prompt(
        template.version,
        template.system,
        user,
        {v: k for k, v in refs.items()},
        [e["ref"] for e in events],
        estimate_tokens(template.system + user),
        len(chosen),
        total,
    )


def map_back(draft: dict[str, Any], refs: Mapping[str, str]) -> dict[str, Any]:
    """Replace short references in a draft's evidence by event ids; unknown ones stay
    (and the guardrails drop them as not being events of the case)."""
    out = dict(draft)
    out["key_facts"] = [
        {**f, "evidence_event_ids": [refs.get(e, e) for e in f.get("evidence_event_ids", [])]}
        for f in draft.get("key_facts", [])
        if isinstance(f, dict)
    ]
    return out


_TAG_START = re.compile(r"<(?!(?:PAN|IBAN|EMAIL|PHONE|PERSON|IP|DEVICE|LINKED_ACCOUNT)_\d+>)")


def _inert(data_json: str) -> str:
    """Every "<" but our placeholders' becomes the JSON escape \\u003c (the same string
    once parsed), so no text inside the data can open or close a block of the prompt."""
    return _TAG_START.sub(lambda _: "\\u003c", data_json)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _numbered() -> Callable[[str, str], str]:
    """Aliases numbered in order of first use (for a prompt built without a vault)."""
    seen: dict[tuple[str, str], str] = {}

    def alias(kind: str, shown: str) -> str:
        n = sum(1 for k, _ in seen if k == kind) + 1
        return seen.setdefault((kind, shown), f"<{kind}_{n}>")

    return alias


def _assessment(
    floor: CaseBrief, scrub: Callable[[str], str], alias: Callable[[str, str], str]
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "risk_level": floor.risk_level.value,
        "risk_score": floor.risk_score,
        "reason_codes": [r.value for r in floor.reason_codes],
        "findings": [scrub(f.text) for f in floor.key_facts],
        "suggested_actions": [a.value for a in floor.recommended_actions],
    }
    if floor.linked_accounts:  # by placeholder: the model reasons about the network, never ids
        out["linked_accounts"] = [
            {
                "account": alias("LINKED_ACCOUNT", link.account_id),
                "shared": link.entity_kind.value,
                "open_cases": len(link.case_ids),
                "analyst_decision": link.disposition.value if link.disposition else None,
                "same_family_name": link.household,
            }
            for link in floor.linked_accounts
        ]
    return out


def _must_include(records: Mapping[str, list[Record]], floor: CaseBrief) -> set[str]:
    named = {tid for a in records["alert"] for tid in a.get("transaction_ids") or ()}
    must = {r["event_id"] for r in records["alert"]}
    must |= {t["event_id"] for t in records["transaction"] if t["transaction_id"] in named}
    must |= {e for fact in floor.key_facts for e in fact.evidence_event_ids}
    return must


def _choose(
    records: Mapping[str, list[Record]], refs: Mapping[str, str], must: set[str], budget: int
) -> set[str]:
    chosen, used = set(), 0
    everything = [(k, r) for k in KINDS for r in records[k]]
    ordered = [kr for kr in everything if kr[1]["event_id"] in must] + sorted(
        (kr for kr in everything if kr[1]["event_id"] not in must),
        key=lambda kr: -kr[1]["occurred_at"],
    )
    for kind, record in ordered:
        size = len(_dumps(_compact(kind, record, refs))) + 1
        if record["event_id"] not in must and used + size > budget:
            break
        chosen.add(record["event_id"])
        used += size
    return chosen


def _compact(kind: str, r: Record, refs: Mapping[str, str]) -> dict[str, Any]:
    """The record without nulls, its id as a short reference, its kind named."""
    skip = {"event_id", "account_id"}
    out = {k: v for k, v in r.items() if v not in (None, "", [], False) and k not in skip}
    return {"ref": refs[r["event_id"]], "kind": kind, **out}


def _aggregate(rest: list[Record]) -> dict[str, Any]:
    if not rest:
        return {"count": 0}
    txns = [r for r in rest if "amount_minor" in r]
    by = Counter(f"{t['direction']}/{t['channel']}/{t['status']}" for t in txns)
    sums: Counter[str] = Counter()
    for t in txns:
        sums[f"{t['direction']} {t['currency']}"] += t["amount_minor"]
    signals = Counter(r["signal_type"] for r in rest if "signal_type" in r)
    return {
        "count": len(rest),
        "first_at": min(r["occurred_at"] for r in rest),
        "last_at": max(r["occurred_at"] for r in rest),
        "transactions_by_kind": dict(by),
        "amount_minor_totals": dict(sums),
        "signals_by_type": dict(signals),
    }
