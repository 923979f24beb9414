"""`streamproc feedback export --out DIR`: analysts' decisions as labelled evaluation rows.

Each decided case (CONFIRMED_FRAUD or FALSE_POSITIVE; INCONCLUSIVE and ESCALATED decide
nothing) becomes a case of a labelled set in the format `make eval` reads: the case's
events (its account's transactions and device signals inside the brief's window, and
its alerts) with every PII field and every PII found in free text replaced by
placeholders, and a label made from the analyst's decision:

- reason codes: the brief's, minus those the analyst removed, plus those they added;
- risk range: the analyst's own level when given; else CONFIRMED_FRAUD is HIGH to
  CRITICAL and FALSE_POSITIVE is LOW to MEDIUM (the agreement rule of the metrics);
- events to cite: the evidence of the key facts the analyst did not flag.

The latest decision on a case wins, of those about a brief still on its topic. The
analyst's comment is not exported: it is free text, PII-bearing, and no label needs it.
Nothing here decides anything: it records what analysts decided so the evaluation can
hold the briefs to it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from streamproc.config import Settings
from streamproc.contracts.codec import AvroCodec
from streamproc.contracts.records import from_json, parse_timestamp
from streamproc.privacy.redact import Redactor
from streamproc.sim.labelled import Label

DECIDED = {"CONFIRMED_FRAUD": ("HIGH", "CRITICAL"), "FALSE_POSITIVE": ("LOW", "MEDIUM")}
FILES = ("transactions", "device_signals", "alerts")


@dataclass
class Export:
    """What one export holds, ready to write."""

    events: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {f: [] for f in FILES})
    labels: list[Label] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1


def labelled_set(
    decisions: Iterable[Mapping[str, Any]],
    briefs: Iterable[Mapping[str, Any]],
    events: Mapping[str, list[dict[str, Any]]],
    redactor: Redactor,
) -> Export:
    """The labelled set of the decided cases (JSON forms in, JSON forms out)."""
    by_brief = {b["brief_id"]: b for b in briefs}
    out = Export()
    latest: dict[str, Mapping[str, Any]] = {}
    for d in sorted(decisions, key=lambda d: _ms(d["decided_at"])):
        if d["brief_id"] in by_brief:
            latest[d["case_id"]] = d
        else:
            out.skip("brief not on its topic")
    for case_id, decision in sorted(latest.items()):
        if decision["disposition"] not in DECIDED:
            out.skip(f"disposition {decision['disposition']}")
            continue
        brief = by_brief[decision["brief_id"]]
        case_events = _case_events(brief, events)
        redacted, _vault = redactor.redact(
            {
                "transaction": case_events["transactions"],
                "signal": case_events["device_signals"],
                "alert": case_events["alerts"],
            }
        )
        for name, kind in zip(FILES, ("transaction", "signal", "alert"), strict=True):
            out.events[name] += redacted[kind]
        out.labels.append(_label(case_id, decision, brief))
    return out


def _case_events(
    brief: Mapping[str, Any], events: Mapping[str, list[dict[str, Any]]]
) -> dict[str, list[dict[str, Any]]]:
    account = brief["account_id"]
    lo, hi = _ms(brief["window_start"]), _ms(brief["window_end"])
    alert_ids = set(brief["alert_ids"])
    inside = {
        name: [
            e
            for e in events.get(name, [])
            if e.get("account_id") == account and lo <= _ms(e["occurred_at"]) <= hi
        ]
        for name in ("transactions", "device_signals")
    }
    inside["alerts"] = [a for a in events.get("alerts", []) if a.get("alert_id") in alert_ids]
    return {name: _unique(rows) for name, rows in inside.items()}


def _label(case_id: str, decision: Mapping[str, Any], brief: Mapping[str, Any]) -> Label:
    removed = set(decision.get("reason_codes_removed") or ())
    codes = [c for c in brief["reason_codes"] if c not in removed]
    codes += [c for c in decision.get("reason_codes_added") or () if c not in codes]
    assessed = decision.get("risk_level_assessed")
    low, high = (assessed, assessed) if assessed else DECIDED[decision["disposition"]]
    flagged = set(decision.get("facts_flagged") or ())
    cite = [
        event_id
        for i, fact in enumerate(brief["key_facts"])
        if i not in flagged
        for event_id in fact["evidence_event_ids"]
    ]
    return Label(
        case_id=case_id,
        account_id=brief["account_id"],
        kind="analyst_" + decision["disposition"].lower(),
        reason_codes=codes,
        acceptable_codes=[],
        min_level=low,
        max_level=high,
        must_cite=list(dict.fromkeys(cite)),
        planted_pii=[],
        injection="",
        canary="",
        fraud=decision["disposition"] == "CONFIRMED_FRAUD",
    )


def write(export: Export, out: Path, about: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        rows = sorted(export.events[name], key=lambda e: (_ms(e["occurred_at"]), e["event_id"]))
        (out / f"{name}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in rows))
    (out / "labels.jsonl").write_text(
        "".join(json.dumps(asdict(label)) + "\n" for label in export.labels)
    )
    manifest = {
        **about,
        "cases": len(export.labels),
        "skipped": export.skipped,
        "counts": {name: len(export.events[name]) for name in FILES},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def export_from_kafka(settings: Settings, codec: AvroCodec, out: Path, timeout_s: float) -> Export:
    """Read each topic from its start to its end (BrokerError past `timeout_s`), write DIR."""
    from streamproc.cli.kafkaio import read_records

    t = settings.topics

    def read(topic: str) -> list[dict[str, Any]]:
        rows = read_records(settings, topic, timeout_s=timeout_s, to_end=True, codec=codec)
        return [r for r in rows if "_undecodable" not in r]  # the DLQ has those

    events = {
        "transactions": read(t.transactions),
        "device_signals": read(t.device_signals),
        "alerts": read(t.alerts),
    }
    export = labelled_set(
        read(t.feedback), read(t.briefs), events, Redactor.for_inputs(codec.schemas, t)
    )
    _check(export, codec, settings)
    write(export, out, {"source": f"analysts' decisions on {t.feedback}", "exported_at": _now()})
    return export


def _check(export: Export, codec: AvroCodec, settings: Settings) -> None:
    """Every exported event still meets its topic's contract (placeholders are strings)."""
    t = settings.topics
    topic_of = {
        "transactions": t.transactions,
        "device_signals": t.device_signals,
        "alerts": t.alerts,
    }
    for name, rows in export.events.items():
        schema = codec.schemas.for_topic(topic_of[name])
        for row in rows:
            from_json(schema, row)


def _unique(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return list({r["event_id"]: r for r in rows}.values())


def _ms(value: Any) -> int:
    return parse_timestamp(value, "timestamp")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
