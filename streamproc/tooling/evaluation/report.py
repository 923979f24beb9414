"""What a run reads as: the markdown report of one split, and the quality card across modes."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from streamproc.tooling.evaluation.gates import HARD_ZERO, MINIMUMS, THRESHOLDS
from streamproc.tooling.evaluation.load import SPLITS


def shown(value: Any) -> str:
    return "n/a" if value is None else str(value)


def _gate(key: str) -> str:
    parts = []
    if key in HARD_ZERO:
        parts.append("must be 0")
    if key in MINIMUMS:
        parts.append(f"≥ {MINIMUMS[key]}")
    if key in THRESHOLDS:
        direction, allowed = THRESHOLDS[key]
        if key == "prompt_tokens_mean":
            parts.append(f"≤ +{allowed:.0%} vs baseline")
        else:
            parts.append(f"{'≥ −' if direction == 'up' else '≤ +'}{allowed} vs baseline")
    return "; ".join(parts)


def report_md(
    mode: str,
    metrics: dict[str, Any],
    baseline: dict[str, Any] | None,
    rows: list[dict[str, Any]],
    failures: list[str],
    split: str = "",
) -> str:
    """One split's report: the metrics with their gates, then per kind, then the cases
    whose level fell outside the label, the facts their events do not support, and what
    the planted injections steered in drafts and reached in published briefs."""
    title = f"{split}: {metrics['cases']} labelled cases" if split else f"{metrics['cases']} cases"
    lines = [
        f"## {title}. Result: " + ("**PASS**" if not failures else "**FAIL**"),
        "",
        "| metric | this run | baseline | gate |",
        "| --- | --- | --- | --- |",
    ]
    for key, value in metrics.items():
        if key in ("cases", "by_kind"):
            continue
        old = baseline.get(key, "–") if baseline else "–"
        lines.append(f"| {key} | {shown(value)} | {shown(old)} | {_gate(key)} |")
    if failures:
        lines += ["", "Failures:", "", *(f"- {f}" for f in failures)]
    lines += [
        "",
        "| kind | cases | level ok | reason precision | reason recall | support | "
        "missing codes | unexpected | uncited |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_kind[row["kind"]].append(row)
    for kind, krows in by_kind.items():
        k = metrics.get("by_kind", {}).get(kind, {})
        missing = Counter(c for r in krows for c in r["missing_codes"])
        unexpected = Counter(c for r in krows for c in r["unexpected_codes"])
        uncited = sum(len(r["uncited"]) for r in krows)
        lines.append(
            f"| {kind} | {len(krows)} | {sum(r['level_ok'] for r in krows)}/{len(krows)} | "
            f"{shown(k.get('reason_precision'))} | {shown(k.get('reason_recall'))} | "
            f"{shown(k.get('evidence_support'))} | {_fmt_counter(missing)} | "
            f"{_fmt_counter(unexpected)} | {uncited} |"
        )
    wrong = [r for r in rows if not r["level_ok"]]
    if wrong:
        lines += ["", "Risk level outside the label:", ""]
        lines += [
            f"- {r['case_id']}: {r['risk_level']} (expected {r['expected_level']}, "
            f"floor {r['floor_level']})"
            for r in wrong
        ]
    unsupported = [(r["case_id"], t) for r in rows for t in r["unsupported_facts"]]
    if unsupported:
        lines += ["", "Facts the cited events do not support:", ""]
        lines += [f"- {cid}: {text[:160]}" for cid, text in unsupported[:20]]
    return "\n".join([*lines, *_injections(rows)]) + "\n"


def _injections(rows: list[dict[str, Any]]) -> list[str]:
    """Drafts the planted injection steered and published briefs it reached, by sign
    (nothing when there is neither a draft nor a success to show)."""
    drafted = [r for r in rows if r.get("injection_attempt") is not None]
    reached = [r for r in rows if r.get("injection_published")]
    if not drafted and not reached:
        return []
    steered = Counter(s for r in drafted for s in r["injection_attempt"])
    published = Counter(s for r in reached for s in r["injection_published"])
    lines = [
        "",
        "Injections planted in the cases' free text:",
        "",
        f"- drafts they steered: {sum(bool(r['injection_attempt']) for r in drafted)}"
        f"/{len(drafted)} ({_fmt_counter(steered)})",
        f"- published briefs they reached: {len(reached)}/{len(rows)} "
        f"({_fmt_counter(published)}; must be 0)",
    ]
    return lines + [f"  - {r['case_id']}: {', '.join(r['injection_published'])}" for r in reached]


def _fmt_counter(c: Counter[str]) -> str:
    return ", ".join(f"{k}×{v}" for k, v in sorted(c.items())) or "–"


def quality_card(reports: dict[str, dict[str, Any]]) -> str:
    """Per kind, what each mode's briefs get right and wrong, held-out split first.
    `reports`: mode → the JSON report `main` writes for it."""
    modes = list(reports)
    lines = [
        "# Quality card",
        "",
        "What the published briefs get right and wrong, per kind and overall, for each mode "
        "evaluated. The held-out split (seeds never used while developing) comes first; "
        "never tune on it. Cells: cases with the risk level inside the label / reason-code "
        "precision / recall / share of facts their cited events support. A model has two "
        "columns: the brief analysts get (after the guardrails, which keep the deterministic "
        "floor) and its own draft before them.",
        "",
    ]
    for split in SPLITS:
        if not all(split in r["splits"] for r in reports.values()):
            continue
        columns = [(m, "") for m in modes] + [(m, "draft_") for m in modes if m != "deterministic"]
        heads = [m if not d else f"{m}: its own draft" for m, d in columns]
        lines += [f"## {split}", "", "| kind | " + " | ".join(heads) + " |"]
        lines.append("| --- |" + " --- |" * len(columns))
        first = reports[modes[0]]["splits"][split]["metrics"]
        for kind in [*first["by_kind"], "overall"]:
            cells = []
            for mode, d in columns:
                m = reports[mode]["splits"][split]["metrics"]
                k = m if kind == "overall" else m["by_kind"].get(kind)
                if not k:
                    cells.append("–")
                    continue
                agree = k[f"{d}risk_agreement"]
                n = k["cases"]
                ok = "n/a" if agree is None else f"{round(agree * n)}/{n}"
                support = k["draft_support" if d else "evidence_support"]
                cells.append(
                    f"{ok} / {shown(k[f'{d}reason_precision'])} / "
                    f"{shown(k[f'{d}reason_recall'])} / {shown(support)}"
                )
            name = f"**{kind}**" if kind == "overall" else kind
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
        for mode in modes:
            m = reports[mode]["splits"][split]["metrics"]
            if mode != "deterministic":
                lines.append(
                    f"- {mode}: {m['cases']} cases; fallback rate {shown(m['fallback_rate'])}; "
                    f"drafts overruled by the guardrails {shown(m['overruled_rate'])}; drafts "
                    f"an injection steered {shown(m.get('injection_attempts_draft'))}; draft "
                    f"facts citing only the case's events {shown(m['draft_grounding'])}; answer "
                    f"time p50 {shown(m['latency_ms_p50'])} ms, max "
                    f"{shown(m['latency_ms_max'])} ms."
                )
        lines.append("")
    return "\n".join(lines)
