"""Briefs as an analyst reads them in a terminal: risk first, then facts, actions, timeline."""

from __future__ import annotations

import textwrap
from typing import Any

from streamproc.contracts.records import iso

WIDTH = 96
TIMELINE_SHOWN = 12


def _ms(value: Any) -> str:
    return iso(value) if isinstance(value, int) else str(value)


def render_brief(b: dict[str, Any]) -> str:
    """`b` is a decoded brief (JSON form: timestamps as ISO strings or epoch ms)."""
    gen = b["generation"]
    method = gen["method"] + (f" ({gen['fallback_reason']})" if gen.get("fallback_reason") else "")
    head = (
        f"━━ {b['case_id']} · v{b['brief_version']} · {b['risk_level']} "
        f"{b['risk_score']}/100 · confidence {b['confidence']} · {method}"
    )
    lines = [
        head,
        f"   account {b['account_id']} · alerts {', '.join(b['alert_ids'])} · "
        f"brief {b['brief_id']}",
        f"   reasons: {', '.join(b['reason_codes'])}",
    ]
    lines += textwrap.wrap(b["summary"], WIDTH, initial_indent="   ", subsequent_indent="   ")
    lines.append("   key facts:")
    for fact in b["key_facts"]:
        ev = ", ".join(fact["evidence_event_ids"][:4])
        more = len(fact["evidence_event_ids"]) - 4
        ev += f" +{more}" if more > 0 else ""
        lines += textwrap.wrap(
            f"• {fact['text']} [{ev}]", WIDTH, initial_indent="     ", subsequent_indent="       "
        )
    lines.append(f"   suggested (for a human to decide): {', '.join(b['recommended_actions'])}")
    if b["data_gaps"]:
        lines.append("   data gaps: " + "; ".join(b["data_gaps"]))
    timeline = b["timeline"]
    lines.append(
        f"   timeline ({len(timeline)} events, last {min(len(timeline), TIMELINE_SHOWN)}):"
    )
    for entry in timeline[-TIMELINE_SHOWN:]:
        lines.append(
            f"     {_ms(entry['occurred_at'])[:19]}  {entry['kind'][:5]:<5}  {entry['description']}"
        )
    counts = b["counts"]
    lines.append(
        f"   counts: {counts['transactions']} transactions, {counts['device_signals']} "
        f"device signals, {counts['alerts']} alerts"
    )
    return "\n".join(lines)
